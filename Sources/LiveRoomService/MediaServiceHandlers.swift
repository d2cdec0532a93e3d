import LiveRoomDomain
import LiveRoomMessages
import LiveRoomRPC
import NIOCore

/// `liveroom.v1.MediaService`: publishers in, viewers out.
public enum MediaServiceHandlers {
    /// - Parameter viewerMerge: how long writes to a viewer of a live room may wait to go out
    ///   together (nil: at once).
    public static func register(_ registry: RoomRegistry, viewerMerge: TimeAmount? = nil, tokens: ViewerTokens, urls: PlaybackURLs,
                                in services: inout ServiceRegistry) {
        let lanes = EventLoopLanes(flushDelay: viewerMerge)
        services.unary(MediaService.issueViewerToken) { request, context in
            context.addLogMetadata("room", request.roomId)
            return try await domain { try await issueViewerToken(registry, tokens, urls, request) }
        }
        services.clientStreaming(MediaService.streamData) { requests, context in
            try await domain { try await publish(registry, requests, context) }
        }
        services.serverStreaming(MediaService.watch) { request, sender, context in
            context.addLogMetadata("room", request.roomId)
            context.addLogMetadata("viewer", request.viewerId)
            try await domain { try await watch(registry, request, sender, context, lanes) }
        }
    }

    static func publish(_ registry: RoomRegistry, _ requests: RequestSequence<StreamDataRequest>, _ context: CallContext) async throws
        -> StreamDataResponse
    {
        var it = requests.makeAsyncIterator()
        guard let first = try await it.next(), case .start(let start)? = first.message else {
            throw RoomError(.invalidArgument, "the first StreamData message must be `start` with room_id and stream_key")
        }
        context.addLogMetadata("room", start.roomId)
        let room = try await registry.room(start.roomId)
        let session = try await room.beginPublish(key: start.streamKey, publisherId: start.publisherId)
        context.logger.info("publisher started", metadata: ["publisher": "\(start.publisherId)"])
        // A takeover or close ends this call at once; so does silence past the idle timeout.
        let watchdog = room.supervise(session) { reason in context.abort(RPCStatus(reason)) }
        defer { watchdog.cancel() }
        var summary = StreamDataResponse()
        summary.startedAtMs = registry.now
        var reason = "publisher ended"
        do {
            while let next = try await it.next() {
                guard case .chunk(let chunk)? = next.message else {
                    throw RoomError(.invalidArgument, "only `chunk` messages may follow `start`")
                }
                try await room.publish(chunk, session: session)
                summary.chunksReceived += 1
                summary.bytesReceived += UInt64(chunk.payload.readableBytes)
            }
        } catch {
            reason = "publisher gone"
            await room.endPublish(session, reason: reason)
            throw error
        }
        await room.endPublish(session, reason: reason)
        summary.endedAtMs = registry.now
        return summary
    }

    static let maxTokenTTLSeconds: Int64 = 30 * 86400

    static func issueViewerToken(_ registry: RoomRegistry, _ tokens: ViewerTokens, _ urls: PlaybackURLs,
                                 _ request: IssueViewerTokenRequest) async throws -> IssueViewerTokenResponse {
        try RoomActor.checkViewer(viewerId: request.viewerId, name: request.name, phone: request.phone)
        guard (0...maxTokenTTLSeconds).contains(request.ttlSeconds) else {
            throw RoomError(.invalidArgument, "ttl_seconds must be between 0 (24 hours) and \(maxTokenTTLSeconds) (30 days)")
        }
        let room = try await registry.room(request.roomId)
        guard await room.snapshot().status != .ended else { throw RoomError(.failedPrecondition, "room \(request.roomId) has ended") }
        let expires = registry.now + (request.ttlSeconds == 0 ? 86400 : request.ttlSeconds) * 1000
        var r = IssueViewerTokenResponse()
        r.token = tokens.issue(.init(room: request.roomId, viewer: request.viewerId, name: request.name, phone: request.phone,
                                     expiresAtMs: expires))
        r.expiresAtMs = expires
        if let base = urls.baseURL {
            let q = "?t=" + r.token
            r.playUrl = "\(base)/play/\(request.roomId)\(q)"
            r.flvUrl = "\(base)/live/\(request.roomId).flv\(q)"
            r.mp4Url = "\(base)/live/\(request.roomId).mp4\(q)"
            r.hlsUrl = "\(base)/live/\(request.roomId)/index.m3u8\(q)"
        }
        return r
    }

    static func watch(_ registry: RoomRegistry, _ request: WatchRequest, _ sender: ResponseSender<WatchResponse>,
                      _ context: CallContext, _ lanes: EventLoopLanes) async throws {
        let room = try await registry.room(request.roomId)
        // Viewers of a live room can wait a moment for their writes to be merged; a meeting is
        // a conversation, sent at once.
        let merge = await room.snapshot().kind == .live
        let lane = lanes.lane(for: sender.push.eventLoop)
        let (token, queue) = try await room.join(viewerId: request.viewerId, name: request.name, phone: request.phone,
                                                 lane: lane) { error in
            context.abort(RPCStatus(error))
        }
        // The viewer's queue is drained from its connection's event loop; the call stays open
        // after this handler returns, with no task of its own.
        let pump = ViewerPump(queue: queue, push: sender.push, lane: lane, merge: merge) {
            Task { await room.leave(token) }
        }
        do {
            try await sender.push.eventLoop.submit { pump.start() }.get()
        } catch {
            await room.leave(token)
            throw error
        }
    }
}

/// `liveroom.v1.AudienceService`: our own viewers' statistics.
public enum AudienceServiceHandlers {
    public static func register(_ registry: RoomRegistry, in services: inout ServiceRegistry) {
        let maxStatsMinutes = 1440
        services.unary(AudienceService.getRoomStats) { request, context in
            context.addLogMetadata("room", request.roomId)
            return try await domain {
                let room = try await registry.room(request.roomId)
                var r = GetRoomStatsResponse()
                r.roomId = request.roomId
                let viewers = try await room.viewerStats()
                let audience = try await room.audienceStats()
                r.viewers = viewers
                r.platforms = audience.platforms.values.sorted { $0.platformId < $1.platformId }
                let all = audience.allPlatforms
                r.allPlatforms = all
                r.combinedReach = saturating(viewers.distinctViewers, all.newViewers)
                r.combinedOnline = saturating(viewers.onlineNow, all.viewersOnline)
                // The latest day per platform: an answer stays the same size however long the room lives.
                let minutes = audience.minutes.values.sorted { ($0.minuteStartMs, $0.platformId) < ($1.minuteStartMs, $1.platformId) }
                r.minutes = Array(minutes.suffix(maxStatsMinutes * max(1, r.platforms.count)))
                return r
            }
        }
        services.unary(AudienceService.listViewers) { request, context in
            context.addLogMetadata("room", request.roomId)
            return try await domain {
                guard request.pageSize >= 0 else { throw RoomError(.invalidArgument, "page_size must not be negative") }
                let size = request.pageSize == 0 ? 50 : min(Int(request.pageSize), 1000)
                var offset = 0
                if !request.pageToken.isEmpty {
                    guard let o = Int(request.pageToken), o >= 0 else {
                        throw RoomError(.invalidArgument, "page_token is not one this server gave out")
                    }
                    offset = o
                }
                let room = try await registry.room(request.roomId)
                let (page, more) = try await room.viewerPage(offset: offset, limit: size, onlineOnly: request.onlineOnly,
                                                             maxBytes: context.maxFrameSize - 1024)
                var r = ListViewersResponse()
                let now = registry.now
                r.viewers = page.map { $0.message(nowMs: now) }
                if more { r.nextPageToken = String(offset + page.count) }
                return r
            }
        }
    }
}

/// `liveroom.testing.v1.TestControl`, only with --enable-test-service.
enum TestControlHandlers {
    static func register(_ clock: AdjustableClock, in services: inout ServiceRegistry) {
        services.unary(TestControl.advanceClock) { request, _ in
            var r = AdvanceClockResponse()
            r.nowMs = clock.advance(byMs: request.byMs)
            return r
        }
    }
}
