import LiveRoomMessages

/// A platform rooms can be created on, from the daemon's configuration.
public struct PlatformSettings: Sendable, Equatable {
    public var id: String
    public var displayName: String
    public var supportsLive = true
    public var supportsMeeting = true
    /// `unix:PATH` or `HOST:PORT`; empty for the built-in platform.
    public var connector = ""
    /// Presented to the connector as `authorization: Bearer …`.
    public var token = ""
    public var keyTTLMs: Int64 = 24 * 3600 * 1000
    /// Deadline for each call to the connector.
    public var timeoutMs: Int64 = 5000
    /// How rooms created without an ingest take their broadcaster: relay through us unless the
    /// platform's config says direct (e.g. a platform that only takes its own app's stream).
    public var defaultIngest: Ingest = .relay

    public static let builtinID = "self"

    public init(id: String, displayName: String) {
        self.id = id
        self.displayName = displayName
    }

    public var isBuiltin: Bool { id == Self.builtinID }

    public func supports(_ kind: RoomKind) -> Bool {
        kind == .meeting ? supportsMeeting : supportsLive
    }
}

/// Talks to one external platform. Implemented over RPC by the service layer; failures are
/// `RoomError`s with UNAVAILABLE or DEADLINE_EXCEEDED and the platform's reason.
public protocol PlatformClient: Sendable {
    func createRoom(_ request: CreatePlatformRoomRequest) async throws -> CreatePlatformRoomResponse
    func rotateKey(platformRoomId: String) async throws -> RotatePlatformKeyResponse
    func status(platformRoomId: String) async throws -> GetPlatformRoomStatusResponse
    func close(platformRoomId: String, requestId: String) async throws
    /// nil when the connector answers; else why not.
    func probe() async -> String?
}

/// Where the built-in platform's rooms are reached.
public struct BuiltinEndpoints: Sendable, Equatable {
    /// Push server handed to broadcasters, e.g. `rtmp://127.0.0.1:1935/live`.
    public var pushServer = "rtmp://127.0.0.1:1935/live"
    /// Prefix of play URLs for our embedded player; the room id is appended.
    public var playURLBase = "liveroom://127.0.0.1/rooms/"
    public init() {}
}
