import CoreMetrics
import Foundation
import LiveRoomDomain
import LiveRoomMessages
import LiveRoomRTMP
import Logging

/// Every room's destinations: stored ones and a relay room's own platform, each run by a
/// `DestinationRunner` from the moment the room's actor exists until the room ends or the
/// destination is removed.
public actor RelayManager {
    /// A room has at most this many destinations: each one is a connection and a queue.
    static let maxDestinations = 64

    private let context: RelayContext
    private let store: DestinationStore
    private var runners: [String: [String: DestinationRunner]] = [:]
    private var stopping = false

    init(context: RelayContext, store: DestinationStore) {
        self.context = context
        self.store = store
    }

    /// A room's actor was made: start its destinations.
    func roomLoaded(_ room: RoomActor) async {
        guard runners[room.id] == nil, !stopping else { return }
        runners[room.id] = [:]
        let record = await room.snapshot()
        guard record.status != .ended else { return }
        var list: [DestinationRecord] = []
        if let own = Self.ownPlatform(record) { list.append(own) }
        do {
            list += try await store.destinations(roomId: room.id)
        } catch {
            context.logger.error("cannot load the room's destinations", metadata: ["room": "\(room.id)", "error": "\(error)"])
        }
        for d in list { start(d, room) }
    }

    /// A relay room publishes to its own platform: a destination implied by the room.
    static func ownPlatform(_ record: RoomRecord) -> DestinationRecord? {
        guard record.ingest == .relay else { return nil }
        return DestinationRecord(id: DestinationRecord.platformId, roomId: record.id, targetRoomId: record.id, url: "", streamKey: "",
                                 createdAtMs: record.createdAtMs)
    }

    private func start(_ d: DestinationRecord, _ room: RoomActor) {
        guard !stopping, runners[d.roomId]?[d.id] == nil else { return }
        let runner = DestinationRunner(destination: d, room: room, context: context)
        runners[d.roomId, default: [:]][d.id] = runner
        runner.start()
    }

    /// Adds a destination to a room after checking it; it starts at once.
    func add(_ request: AddDestinationRequest) async throws -> Destination {
        let room = try await context.registry.room(request.roomId)
        let source = await room.snapshot()
        guard source.status != .ended else { throw RoomError(.failedPrecondition, "room \(source.id) has ended") }
        await roomLoaded(room)
        guard (runners[source.id]?.count ?? 0) < Self.maxDestinations else {
            throw RoomError(.resourceExhausted, "room \(source.id) has \(Self.maxDestinations) destinations, the most a room may have")
        }
        let hasTarget = !request.targetRoomId.isEmpty
        let hasURL = !request.url.isEmpty || !request.streamKey.isEmpty
        guard hasTarget != hasURL else {
            throw RoomError(.invalidArgument, "give either target_room_id (a room on another platform) or url and stream_key")
        }
        var record = DestinationRecord(id: StreamKey.identifier(prefix: "dst_"), roomId: source.id, targetRoomId: "", url: "",
                                       streamKey: "", createdAtMs: context.registry.now)
        if hasTarget {
            try await checkTarget(request.targetRoomId, source: source)
            record.targetRoomId = request.targetRoomId
        } else {
            let url: RTMPURL
            do { url = try RTMPURL(request.url) } catch {
                throw RoomError(.invalidArgument, "url: \(error)")
            }
            guard !request.streamKey.isEmpty, request.streamKey.utf8.count <= 1024,
                !request.streamKey.unicodeScalars.contains(where: { $0.value < 0x21 || $0.value == 0x7F })
            else {
                throw RoomError(.invalidArgument, "stream_key is required: 1 to 1024 bytes, no spaces or control characters")
            }
            guard request.url.utf8.count <= 1024 else { throw RoomError(.invalidArgument, "url is longer than 1024 bytes") }
            guard !context.isOwnIngest(url) else {
                throw RoomError(.invalidArgument, "\(url) is this daemon's own RTMP ingest: relaying there would loop")
            }
            record.url = url.description
            record.streamKey = request.streamKey
        }
        try await store.insertDestination(record, ignoringDuplicate: false)
        start(record, room)
        return await message(record)
    }

    private func checkTarget(_ id: String, source: RoomRecord) async throws {
        guard id != source.id else {
            throw RoomError(.invalidArgument, "a room cannot be its own destination (a relay room's platform is destination \"platform\" already)")
        }
        let target: RoomRecord
        do { target = try await context.registry.room(id).snapshot() } catch let e as RoomError where e.code == .notFound {
            throw RoomError(.invalidArgument, "target_room_id: no room \(id)")
        }
        guard target.platformId != PlatformSettings.builtinID else {
            throw RoomError(.invalidArgument, "room \(id) is on the built-in platform: its viewers already watch through us; link rooms on external platforms")
        }
        guard target.status != .ended else { throw RoomError(.failedPrecondition, "room \(id) has ended") }
        guard !target.platformPushServer.isEmpty, !target.platformStreamKey.isEmpty else {
            throw RoomError(.failedPrecondition, "room \(id) has no platform ingest on record (made before relays existed): rotate its key once")
        }
    }

    /// Links rooms made by a simulcast create to their source (idempotent: a retried create links once).
    func link(source: RoomActor, targets: [RoomRecord]) async throws {
        let now = context.registry.now
        for t in targets {
            let d = DestinationRecord(id: "sim_\(t.platformId)", roomId: source.id, targetRoomId: t.id, url: "", streamKey: "", createdAtMs: now)
            try await store.insertDestination(d, ignoringDuplicate: true)
        }
        await roomLoaded(source)
        for d in try await store.destinations(roomId: source.id) { start(d, source) }
    }

    func remove(roomId: String, destinationId: String) async throws {
        _ = try await context.registry.room(roomId)
        if destinationId == DestinationRecord.platformId {
            throw RoomError(.failedPrecondition, "destination \"platform\" is the room's own platform; create the room with ingest DIRECT to go there without us")
        }
        guard try await store.deleteDestination(roomId: roomId, id: destinationId) else {
            throw RoomError(.notFound, "room \(roomId) has no destination \(destinationId)")
        }
        if let runner = runners[roomId]?.removeValue(forKey: destinationId) { await runner.stop() }
    }

    func list(roomId: String) async throws -> [Destination] {
        let room = try await context.registry.room(roomId)
        await roomLoaded(room)
        let record = await room.snapshot()
        var all: [DestinationRecord] = []
        if let own = Self.ownPlatform(record) { all.append(own) }
        all += try await store.destinations(roomId: roomId)
        var out: [Destination] = []
        for d in all { out.append(await message(d)) }
        return out
    }

    private func message(_ d: DestinationRecord) async -> Destination {
        var m = Destination()
        m.destinationId = d.id
        m.roomId = d.roomId
        m.targetRoomId = d.targetRoomId
        m.createdAtMs = d.createdAtMs
        var key = d.streamKey
        m.url = d.url
        if !d.targetRoomId.isEmpty, let target = try? await context.registry.room(d.targetRoomId).snapshot() {
            m.platformId = target.platformId
            m.url = target.platformPushServer
            key = target.platformStreamKey
        }
        m.streamKeyHint = key.count > 8 ? "…" + String(key.suffix(4)) : "…"
        let s = runners[d.roomId]?[d.id]?.status ?? DestinationStatus()
        m.state = s.state
        m.lastError = s.lastError
        m.nextAttemptAtMs = s.nextAttemptAtMs
        m.bytesSent = s.bytesSent
        m.bitrateBps = s.bitrateBps
        m.reconnects = s.reconnects
        m.liveSinceMs = s.liveSinceMs
        return m
    }

    /// Stops every relay, unpublishing from the platforms (graceful shutdown).
    func stopAll() async {
        stopping = true
        let all = runners.values.flatMap(\.values)
        runners = [:]
        await withTaskGroup(of: Void.self) { group in
            for r in all { group.addTask { await r.stop() } }
        }
    }
}
