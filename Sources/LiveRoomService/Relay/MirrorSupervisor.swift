import LiveRoomDomain
import LiveRoomMessages
import LiveRoomRTMP
import Logging

/// Mirrors platforms' lives into our direct-ingest rooms: asks each open direct room's platform
/// for its status at an interval (and whenever a room is refreshed), pulls the stream while the
/// platform says it is live, and stops when it ends. Our viewers watch the mirror as if the
/// broadcaster published to us.
actor MirrorSupervisor {
    private let registry: RoomRegistry
    private let client: RTMPClient.Configuration
    private let retry: Backoff
    private let logger: Logger
    private var pullers: [String: Task<Void, Never>] = [:]

    init(registry: RoomRegistry, client: RTMPClient.Configuration, retry: Backoff, logger: Logger) {
        self.registry = registry
        self.client = client
        self.retry = retry
        self.logger = logger
    }

    /// Polls every open direct room each `intervalMs` until cancelled.
    func run(intervalMs: Int64) async {
        while !Task.isCancelled {
            do {
                for id in try await registry.openRooms(ingest: .direct) where pullers[id] == nil {
                    await check(id)
                }
            } catch {
                logger.notice("cannot list direct rooms to mirror", metadata: ["error": "\(error)"])
            }
            try? await Task.sleep(for: .milliseconds(intervalMs))
        }
        stopAll()
    }

    /// Asks the platform about one room and starts pulling it if it is live.
    func check(_ id: String) async {
        guard pullers[id] == nil, let room = try? await registry.room(id) else { return }
        do {
            let record = try await room.refresh()
            await roomRefreshed(room, record)
        } catch {
            logger.debug("mirror: platform status unavailable", metadata: ["room": "\(id)", "error": "\(error)"])
        }
    }

    /// Called after any refresh of a direct room (the poll's, or RefreshRoom's).
    func roomRefreshed(_ room: RoomActor, _ record: RoomRecord) async {
        guard record.ingest == .direct, record.status == .live, pullers[room.id] == nil else { return }
        let url = await room.platformPullURL
        guard !url.isEmpty else { return }
        let id = room.id
        logger.info("mirror: the platform is live; pulling", metadata: ["room": "\(id)"])
        pullers[id] = Task { [client, retry, logger] in
            await Self.pull(room, from: url, client: client, retry: retry, logger: logger)
            self.finished(id)
        }
    }

    private func finished(_ id: String) { pullers[id] = nil }

    func stopAll() {
        for t in pullers.values { t.cancel() }
        pullers = [:]
    }

    /// Pulls while the platform says the room is live; reconnects with backoff after failures.
    static func pull(_ room: RoomActor, from url: String, client: RTMPClient.Configuration, retry: Backoff, logger: Logger) async {
        var backoff = retry
        var logger = logger
        logger[metadataKey: "room"] = "\(room.id)"
        var current = url
        while !Task.isCancelled {
            do {
                try await pullOnce(room, from: current, client: client)
                backoff.reset()
                logger.info("mirror: the platform's stream ended")
            } catch {
                logger.notice("mirror: pull failed", metadata: ["error": "\(error)"])
            }
            if Task.isCancelled { return }
            try? await Task.sleep(for: .milliseconds(backoff.next()))
            // Go on only while the platform still says live.
            guard let record = try? await room.refresh(), record.status == .live else { return }
            let next = await room.platformPullURL
            guard !next.isEmpty else { return }
            current = next
        }
    }

    static func pullOnce(_ room: RoomActor, from url: String, client: RTMPClient.Configuration) async throws {
        let isRTMP = url.hasPrefix("rtmp://")
        let play = isRTMP ? try RTMPURL.splitPlay(url) : nil
        if !isRTMP { _ = try HTTPFLVClient.parse(url) }
        let session = try await room.beginMirror(publisherId: "mirror:\(play.map { "\($0.server)" } ?? "http-flv")")
        var muxer = FLVMuxer()
        var bundler = TagBundler()
        /// Muxed exactly as our RTMP ingest muxes a publisher's messages.
        func take(_ message: RTMPMessage) async throws {
            guard let tag = muxer.tag(for: message) else { return }
            for c in bundler.add(tag) { try await room.publish(c, session: session) }
        }
        var ending = "the platform's live ended"
        do {
            try await room.publish(muxer.fileHeader(), session: session)
            if let (server, stream) = play {
                try await RTMPClient.play(from: server, stream: stream, configuration: client) { try await take($0) }
            } else {
                // HTTP-FLV tags are the same messages RTMP would carry.
                try await HTTPFLVClient.pull(url, configuration: client) { flv in
                    try await take(RTMPMessage(chunkStreamId: 0, type: RTMPMessageType(rawValue: flv.type), timestamp: flv.timestamp, payload: flv.data))
                }
            }
            for c in bundler.flush() { try await room.publish(c, session: session) }
        } catch {
            ending = "mirror pull failed: \(error)"
            await room.endPublish(session, reason: ending)
            throw error
        }
        await room.endPublish(session, reason: ending)
    }
}
