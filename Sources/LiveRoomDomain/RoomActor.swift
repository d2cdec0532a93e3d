import LiveRoomMessages

/// One room's state, owned by one actor: every change to a room goes through here and is
/// persisted before the new state is visible.
public actor RoomActor {
    public nonisolated let id: String
    var record: RoomRecord
    let store: RoomStore & ViewerStore & AudienceStore
    let platform: PlatformSettings
    let connector: PlatformClient?
    let clock: WallClock
    let media: MediaSettings
    let metrics: RoomMetrics

    // Media: the current publisher, what a new viewer is sent first, and who watches.
    var publisher: PublishSession?
    var lastChunkAtMs: Int64 = 0
    var header: [MediaChunk] = []
    var headerBytes = 0
    var gop: [MediaChunk] = []
    var gopBytes = 0
    var watchers: [Int: Watcher] = [:]
    var nextWatcher = 0
    /// Watchers grouped by the lane that feeds them.
    var lanes: [ObjectIdentifier: LaneGroup] = [:]

    // Our viewers' statistics, loaded on first use.
    var viewers: [String: ViewerRecord] = [:]
    var connections: [String: Int] = [:]
    var peakConcurrent: Int64 = 0
    var statsLoaded = false
    var dirtyViewers: Set<String> = []
    var peakDirty = false

    // Changes that wait on a connector run one at a time (see `serialized`).
    var changing = false
    var changeWaiters: [CheckedContinuation<Void, Never>] = []

    // Platform audience, rebuilt from stored reports on first use.
    var audience = AudienceAggregate()
    var audienceLoaded = false
    /// The one load in progress, which every caller awaits.
    var audienceLoading: Task<Void, Error>?
    /// Flushes applied while the load runs, with their commit marks: merged by it.
    var audienceHeldBack: [(Int64, [StoredReport])] = []
    /// The commit mark the load read up to.
    var audienceMark: Int64 = 0
    var audienceStore: AudienceStore { store }

    init(record: RoomRecord, store: RoomStore & ViewerStore & AudienceStore, platform: PlatformSettings, connector: PlatformClient?,
         clock: WallClock, media: MediaSettings, metrics: RoomMetrics = RoomMetrics()) {
        self.id = record.id
        self.record = record
        self.store = store
        self.platform = platform
        self.connector = connector
        self.clock = clock
        self.media = media
        self.metrics = metrics
    }

    public func snapshot() -> RoomRecord { record }

    /// Direct rooms: where the platform's live can be pulled from, as of the last refresh ("" if not live).
    public private(set) var platformPullURL = ""

    /// Checks a publisher's stream key: wrong or expired keys are refused.
    public func authorizePublish(key: String) throws {
        guard record.status != .ended else {
            throw RoomError(.failedPrecondition, "room \(id) has ended; create a new room to go live")
        }
        guard StreamKey.equal(key, record.streamKey) else {
            throw RoomError(.permissionDenied, "wrong stream key for room \(id)")
        }
        if record.keyStatus(nowMs: clock.nowMs()) == .expired {
            throw RoomError(.permissionDenied,
                "the stream key of room \(id) expired at \(record.keyExpiresAtMs) (unix ms); rotate it with RotateKey to get a new one")
        }
    }

    /// Issues a new key (through the connector for external platforms); the old one stops
    /// working as soon as the new one is stored.
    public func rotateKey() async throws -> RoomRecord {
        try await serialized { try await self.rotateKeyNow() }
    }

    private func rotateKeyNow() async throws -> RoomRecord {
        guard record.status != .ended else {
            throw RoomError(.failedPrecondition, "room \(id) has ended; its key cannot be rotated")
        }
        var next = record
        let now = clock.nowMs()
        if let connector {
            let r = try await connector.rotateKey(platformRoomId: record.platformRoomId)
            guard !r.streamKey.isEmpty else {
                throw RoomError(.unavailable, "platform \(platform.id) returned an empty stream key")
            }
            next.platformStreamKey = r.streamKey
            if record.ingest == .relay {
                // The broadcaster holds our key; the platform's is ours to keep fresh.
                next.streamKey = StreamKey.generate()
                next.keyExpiresAtMs = now + platform.keyTTLMs
            } else {
                next.streamKey = r.streamKey
                next.keyExpiresAtMs = r.keyExpiresAtMs > 0 ? r.keyExpiresAtMs : now + platform.keyTTLMs
            }
        } else {
            next.streamKey = StreamKey.generate()
            next.keyExpiresAtMs = now + platform.keyTTLMs
        }
        next.updatedAtMs = now
        try await save(next, reason: "key rotated")
        return record
    }

    /// Asks the platform for the room's current status and takes it over.
    public func refresh() async throws -> RoomRecord {
        try await serialized { try await self.refreshNow() }
    }

    private func refreshNow() async throws -> RoomRecord {
        guard let connector, record.status != .ended else { return record }
        let r = try await connector.status(platformRoomId: record.platformRoomId)
        platformPullURL = r.status == .live ? r.pullUrl : ""
        var next = record
        // A relay room is live when we publish, whatever the platform says; the platform's
        // "ended" (closed there) still ends it here.
        if r.status != .unspecified && (record.ingest != .relay || r.status == .ended) { next.status = r.status }
        if r.keyExpiresAtMs > 0 && record.ingest != .relay { next.keyExpiresAtMs = r.keyExpiresAtMs }
        guard next != record else { return record }
        next.updatedAtMs = clock.nowMs()
        try await save(next, reason: "refreshed from platform \(platform.id)")
        return record
    }

    /// Ends the room here and on its platform. Closing an ended room is a no-op.
    public func close() async throws -> RoomRecord {
        try await serialized { try await self.closeNow() }
    }

    private func closeNow() async throws -> RoomRecord {
        guard record.status != .ended else { return record }
        if let connector {
            try await connector.close(platformRoomId: record.platformRoomId, requestId: record.requestId)
        }
        var next = record
        next.status = .ended
        next.updatedAtMs = clock.nowMs()
        try await save(next, reason: "closed")
        endMedia(closing: true)
        return record
    }

    /// Media moves the status between not started and live.
    public func setStatus(_ status: RoomStatus, reason: String) async throws {
        guard record.status != .ended, record.status != status else { return }
        var next = record
        next.status = status
        next.updatedAtMs = clock.nowMs()
        try await save(next, reason: reason)
    }

    /// Runs `body` when no other change is running. Actor methods interleave at every await: two
    /// key rotations waiting on the platform could otherwise store the older of the platform's
    /// two new keys. Waiters go in order; the turn is handed over, never raced for.
    func serialized<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        if changing {
            await withCheckedContinuation { changeWaiters.append($0) }
        } else {
            changing = true
        }
        defer {
            if changeWaiters.isEmpty { changing = false } else { changeWaiters.removeFirst().resume() }
        }
        return try await body()
    }

    /// `next` was computed from the state before any suspension; a room closed meanwhile stays
    /// closed (actor methods interleave at every await).
    func save(_ next: RoomRecord, reason: String) async throws {
        guard record.status != .ended || next.status == .ended else {
            throw RoomError(.failedPrecondition, "room \(id) was closed meanwhile")
        }
        try await store.update(next, previous: record, reason: reason)
        guard record.status != .ended || next.status == .ended else {
            throw RoomError(.failedPrecondition, "room \(id) was closed meanwhile")
        }
        record = next
    }
}
