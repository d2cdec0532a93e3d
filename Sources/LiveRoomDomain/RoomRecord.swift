import LiveRoomMessages

/// Everything the daemon knows about one room. The stream key lives here in memory;
/// the store keeps it encrypted.
public struct RoomRecord: Sendable, Equatable {
    public var id: String
    public var requestId: String
    public var title: String
    public var kind: RoomKind
    public var platformId: String
    public var playMode: PlayMode
    public var ownerId: String
    public var pushServer: String
    public var streamKey: String
    public var keyExpiresAtMs: Int64
    public var playURL: String
    public var platformRoomId: String
    public var status: RoomStatus
    public var createdAtMs: Int64
    public var updatedAtMs: Int64
    /// External rooms: whether broadcasters publish to us (relay) or to the platform (direct).
    public var ingest: Ingest
    /// External rooms: the platform's own ingest, which a relay room publishes to. Under
    /// direct ingest these equal `pushServer` and `streamKey`.
    public var platformPushServer: String
    public var platformStreamKey: String
    /// Anyone may play the room over HTTP; otherwise a viewer token is needed.
    public var publicPlayback: Bool

    public init(id: String, requestId: String, title: String, kind: RoomKind, platformId: String, playMode: PlayMode,
                ownerId: String, pushServer: String, streamKey: String, keyExpiresAtMs: Int64, playURL: String,
                platformRoomId: String, status: RoomStatus, createdAtMs: Int64, updatedAtMs: Int64,
                ingest: Ingest = .unspecified, platformPushServer: String = "", platformStreamKey: String = "",
                publicPlayback: Bool = false) {
        self.publicPlayback = publicPlayback
        self.ingest = ingest
        self.platformPushServer = platformPushServer
        self.platformStreamKey = platformStreamKey
        self.id = id
        self.requestId = requestId
        self.title = title
        self.kind = kind
        self.platformId = platformId
        self.playMode = playMode
        self.ownerId = ownerId
        self.pushServer = pushServer
        self.streamKey = streamKey
        self.keyExpiresAtMs = keyExpiresAtMs
        self.playURL = playURL
        self.platformRoomId = platformRoomId
        self.status = status
        self.createdAtMs = createdAtMs
        self.updatedAtMs = updatedAtMs
    }

    /// Whether our RTMP ingest and StreamData take this room's publisher (built-in and relay rooms).
    public var publishesThroughUs: Bool { platformId == PlatformSettings.builtinID || ingest == .relay }

    public func keyStatus(nowMs: Int64) -> KeyStatus {
        keyExpiresAtMs > 0 && nowMs >= keyExpiresAtMs ? .expired : .valid
    }

    /// The room as the API shows it at `nowMs`.
    public func message(nowMs: Int64) -> Room {
        var r = Room()
        r.roomId = id
        r.title = title
        r.kind = kind
        r.platformId = platformId
        r.playMode = playMode
        r.ownerId = ownerId
        r.pushServer = pushServer
        r.streamKey = streamKey
        r.playUrl = playURL
        r.status = status
        r.keyStatus = keyStatus(nowMs: nowMs)
        r.keyExpiresAtMs = keyExpiresAtMs
        r.createdAtMs = createdAtMs
        r.updatedAtMs = updatedAtMs
        r.platformRoomId = platformRoomId
        r.requestId = requestId
        r.ingest = ingest
        r.publicPlayback = publicPlayback
        return r
    }
}

/// Filters and paging for ListRooms. Rooms come newest first.
public struct RoomQuery: Sendable, Equatable {
    public var status: RoomStatus?
    public var platformId: String?
    public var kind: RoomKind?
    public var limit: Int
    /// Continue after this room (created time, id) from the previous page.
    public var after: (createdAtMs: Int64, id: String)?

    public init(status: RoomStatus? = nil, platformId: String? = nil, kind: RoomKind? = nil, limit: Int = 50,
                after: (createdAtMs: Int64, id: String)? = nil) {
        self.status = status
        self.platformId = platformId
        self.kind = kind
        self.limit = limit
        self.after = after
    }

    public static func == (a: RoomQuery, b: RoomQuery) -> Bool {
        a.status == b.status && a.platformId == b.platformId && a.kind == b.kind && a.limit == b.limit
            && a.after?.createdAtMs == b.after?.createdAtMs && a.after?.id == b.after?.id
    }
}

/// Where rooms are kept. Implementations must make a write durable before returning.
public protocol RoomStore: Sendable {
    func insert(_ room: RoomRecord) async throws
    /// Saves the room; `reason` is recorded in the status history when the status changed.
    func update(_ room: RoomRecord, previous: RoomRecord, reason: String) async throws
    func load(id: String) async throws -> RoomRecord?
    func find(requestId: String) async throws -> RoomRecord?
    /// The room id for `requestId`: `candidate` the first time, durably, and the same id on
    /// every later call, so that a create retried after a crash names the room the platform's
    /// connector (idempotent by request id) already made.
    func reserveRoomId(requestId: String, candidate: String) async throws -> String
    func list(_ query: RoomQuery) async throws -> [RoomRecord]
    func delete(id: String) async throws
    /// The room whose current stream key this is (RTMP publish URLs carry only the key).
    func roomId(forStreamKey key: String) async throws -> String?
    /// Ids of rooms not ended with this ingest (the mirror polls the direct ones).
    func openRooms(ingest: Ingest) async throws -> [String]
}
