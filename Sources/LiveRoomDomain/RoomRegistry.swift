import LiveRoomMessages

/// Finds each room's actor by id (reviving it from the store), creates rooms on the chosen
/// platform, and lists rooms.
public actor RoomRegistry {
    private let store: RoomStore & ViewerStore & AudienceStore
    private let media: MediaSettings
    public nonisolated let metrics: RoomMetrics
    private let platforms: [String: PlatformSettings]
    private let connectors: [String: PlatformClient]
    private var builtin: BuiltinEndpoints
    private let clock: WallClock
    private var rooms: [String: RoomActor] = [:]
    /// Told of every room actor made (created or revived), so outputs can attach to it.
    private var observer: (@Sendable (RoomActor) -> Void)?
    /// Creates in progress by request id, so that concurrent duplicates get the same room.
    private var creating: [String: Task<(room: RoomRecord, created: Bool), Error>] = [:]

    public init(store: RoomStore & ViewerStore & AudienceStore, platforms: [PlatformSettings], connectors: [String: PlatformClient],
                builtin: BuiltinEndpoints, clock: WallClock, media: MediaSettings = MediaSettings(),
                metrics: RoomMetrics = RoomMetrics()) {
        var all = Dictionary(platforms.map { ($0.id, $0) }, uniquingKeysWith: { a, _ in a })
        if all[PlatformSettings.builtinID] == nil {
            all[PlatformSettings.builtinID] = PlatformSettings(id: PlatformSettings.builtinID, displayName: "LiveRoom (built-in)")
        }
        self.store = store
        self.media = media
        self.metrics = metrics
        self.platforms = all
        self.connectors = connectors
        self.builtin = builtin
        self.clock = clock
    }

    public nonisolated var now: Int64 { clock.nowMs() }

    public var platformList: [PlatformSettings] {
        platforms.values.sorted { ($0.isBuiltin ? 0 : 1, $0.id) < ($1.isBuiltin ? 0 : 1, $1.id) }
    }

    public func connector(for platformId: String) -> PlatformClient? { connectors[platformId] }

    /// Creates a room, or returns the one an earlier call with the same request id created.
    public func create(_ request: CreateRoomRequest) async throws -> (room: RoomRecord, created: Bool) {
        let title = request.title.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !title.isEmpty else { throw RoomError(.invalidArgument, "title is required (the activity's name)") }
        guard title.count <= 200 else { throw RoomError(.invalidArgument, "title is \(title.count) characters; at most 200") }
        for (name, value) in [("request_id", request.requestId), ("owner_id", request.ownerId)] where value.utf8.count > 128 {
            throw RoomError(.invalidArgument, "\(name) is \(value.utf8.count) bytes; at most 128")
        }
        guard let platform = platforms[request.platformId] else {
            let known = platformList.map(\.id).joined(separator: ", ")
            throw RoomError(.invalidArgument,
                request.platformId.isEmpty ? "platform_id is required; known platforms: \(known)"
                    : "unknown platform \"\(request.platformId)\"; known platforms: \(known)")
        }
        let kind = request.kind
        guard kind == .live || kind == .meeting else {
            throw RoomError(.invalidArgument, kind == .unspecified ? "kind is required: ROOM_KIND_LIVE or ROOM_KIND_MEETING"
                : "kind must be ROOM_KIND_LIVE or ROOM_KIND_MEETING, got \(kind.rawValue)")
        }
        guard platform.supports(kind) else {
            throw RoomError(.invalidArgument, "platform \(platform.id) does not support \(kind == .meeting ? "meeting" : "live") rooms")
        }
        let playMode: PlayMode = request.playMode == .unspecified ? (platform.isBuiltin ? .embedded : .external) : request.playMode
        guard playMode == .embedded || playMode == .external else { throw RoomError(.invalidArgument, "play_mode must be EXTERNAL or EMBEDDED") }
        guard !(platform.isBuiltin && playMode == .external) else {
            throw RoomError(.invalidArgument, "the built-in platform has no page of its own to jump to: use play mode embedded")
        }

        let requestId = request.requestId.isEmpty ? StreamKey.identifier(prefix: "req_") : request.requestId
        // Registered before the first suspension point, so a duplicate arriving while this one
        // is in flight joins it instead of creating a second room.
        if let pending = creating[requestId] {
            return (try await pending.value.room, false)
        }
        guard request.ingest == .unspecified || request.ingest == .relay || request.ingest == .direct else {
            throw RoomError(.invalidArgument, "ingest must be INGEST_RELAY or INGEST_DIRECT, got \(request.ingest.rawValue)")
        }
        guard !(platform.isBuiltin && request.ingest == .direct) else {
            throw RoomError(.invalidArgument, "the built-in platform is LiveRoom itself: its rooms take the broadcaster directly; leave ingest unset")
        }
        var spec = request
        spec.title = title
        spec.kind = kind
        spec.playMode = playMode
        spec.requestId = requestId
        spec.ingest = platform.isBuiltin ? .unspecified : (request.ingest == .unspecified ? platform.defaultIngest : request.ingest)
        let task = Task { () async throws -> (room: RoomRecord, created: Bool) in
            if let existing = try await self.store.find(requestId: requestId) {
                guard existing.platformId == platform.id else {
                    throw RoomError(.alreadyExists, "request id \(requestId) already created room \(existing.id) on platform \(existing.platformId)")
                }
                return (existing, false)
            }
            return (try await self.make(spec, platform), true)
        }
        creating[requestId] = task
        defer { creating[requestId] = nil }
        return try await task.value
    }

    private func make(_ request: CreateRoomRequest, _ platform: PlatformSettings) async throws -> RoomRecord {
        let now = clock.nowMs()
        // Built-in rooms exist nowhere else, so a fresh id is safe; an external platform's room
        // may outlive a crash of ours, and its audience reports name our id.
        let id = platform.isBuiltin ? StreamKey.identifier(prefix: "rm_")
            : try await store.reserveRoomId(requestId: request.requestId, candidate: StreamKey.identifier(prefix: "rm_"))
        var record = RoomRecord(
            id: id, requestId: request.requestId, title: request.title, kind: request.kind, platformId: platform.id,
            playMode: request.playMode, ownerId: request.ownerId, pushServer: builtin.pushServer, streamKey: StreamKey.generate(),
            keyExpiresAtMs: now + platform.keyTTLMs, playURL: builtin.playURLBase + id, platformRoomId: "",
            status: .notStarted, createdAtMs: now, updatedAtMs: now, publicPlayback: request.publicPlayback)
        let connector = connectors[platform.id]
        if !platform.isBuiltin {
            guard let connector else { throw RoomError(.unavailable, "platform \(platform.id) has no connector configured") }
            var ask = CreatePlatformRoomRequest()
            ask.title = request.title
            ask.kind = request.kind
            ask.ownerId = request.ownerId
            ask.requestId = request.requestId
            ask.roomId = id
            let made: CreatePlatformRoomResponse
            do {
                made = try await connector.createRoom(ask)
            } catch {
                undo(connector, platformRoomId: "", requestId: request.requestId)
                throw error
            }
            guard !made.platformRoomId.isEmpty, !made.streamKey.isEmpty else {
                undo(connector, platformRoomId: made.platformRoomId, requestId: request.requestId)
                throw RoomError(.unavailable, "platform \(platform.id) returned no room id or no stream key")
            }
            for (field, value) in [("platform_room_id", made.platformRoomId), ("push_server", made.pushServer),
                                   ("stream_key", made.streamKey), ("play_url", made.playUrl)] where value.utf8.count > 1024 {
                undo(connector, platformRoomId: made.platformRoomId, requestId: request.requestId)
                throw RoomError(.unavailable, "platform \(platform.id) returned a \(field) of \(value.utf8.count) bytes; at most 1024")
            }
            record.platformRoomId = made.platformRoomId
            record.platformPushServer = made.pushServer
            record.platformStreamKey = made.streamKey
            record.ingest = request.ingest
            if request.ingest == .direct {
                record.pushServer = made.pushServer
                record.streamKey = made.streamKey
                record.keyExpiresAtMs = made.keyExpiresAtMs > 0 ? made.keyExpiresAtMs : now + platform.keyTTLMs
            }
            if request.playMode == .external { record.playURL = made.playUrl }
            if made.status == .live && request.ingest == .direct { record.status = .live }
        }
        do {
            try await store.insert(record)
        } catch {
            if let connector, !platform.isBuiltin { undo(connector, platformRoomId: record.platformRoomId, requestId: request.requestId) }
            throw error
        }
        let actor = RoomActor(record: record, store: store, platform: platform, connector: connector, clock: clock, media: media,
                              metrics: metrics)
        rooms[id] = actor
        observer?(actor)
        return record
    }

    /// Best effort: close what the platform may have made for a create that failed here.
    private nonisolated func undo(_ connector: PlatformClient, platformRoomId: String, requestId: String) {
        // Detached: the undo must not inherit the failed call's deadline (or anything else of it).
        Task.detached { try? await connector.close(platformRoomId: platformRoomId, requestId: requestId) }
    }

    /// The room's actor, revived from the store if needed.
    public func room(_ id: String) async throws -> RoomActor {
        guard !id.isEmpty else { throw RoomError(.invalidArgument, "room_id is required") }
        if let actor = rooms[id] { return actor }
        guard let record = try await store.load(id: id) else { throw RoomError(.notFound, "no room \(id)") }
        if let actor = rooms[id] { return actor }  // revived meanwhile
        let platform = platforms[record.platformId] ?? PlatformSettings(id: record.platformId, displayName: record.platformId)
        let actor = RoomActor(record: record, store: store, platform: platform, connector: connectors[record.platformId],
                              clock: clock, media: media, metrics: metrics)
        rooms[id] = actor
        observer?(actor)
        return actor
    }

    /// Sets the function told of every room actor made from now on.
    public func observeRooms(_ observer: @escaping @Sendable (RoomActor) -> Void) { self.observer = observer }

    /// Ids of the open rooms taking their broadcaster this way.
    public func openRooms(ingest: Ingest) async throws -> [String] { try await store.openRooms(ingest: ingest) }

    /// The platform a room is on.
    public func platform(_ id: String) -> PlatformSettings? { platforms[id] }

    /// Where broadcasters push for rooms created from now on (set once the RTMP listener is bound).
    public func setPushServer(_ url: String) { builtin.pushServer = url }
    /// Where embedded rooms are played: the HTTP listener's player, once it is bound.
    public func setPlayURLBase(_ url: String) { builtin.playURLBase = url }

    /// The room whose current stream key this is, for publishers that present only a key (RTMP).
    public func room(forStreamKey key: String) async throws -> RoomActor? {
        guard !key.isEmpty, let id = try await store.roomId(forStreamKey: key) else { return nil }
        return try await room(id)
    }

    public func list(_ query: RoomQuery) async throws -> [RoomRecord] {
        try await store.list(query)
    }

    /// Persists every loaded room's changed viewer statistics (called periodically and at stop).
    public func flushStats() async {
        for room in rooms.values { try? await room.flushStats() }
    }
}
