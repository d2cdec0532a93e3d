import LiveRoomCodec

/// A call as a raw handler sees it.
public struct ServerCall: Sendable {
    public let context: CallContext
    public let requests: MessageStream
    public let responses: ResponseWriter
}

/// Handles one call. A returned payload is sent as the last message, together with the
/// status OK; throwing an `RPCStatus` ends the call with that status.
public typealias RawHandler = @Sendable (ServerCall) async throws -> RPCPayload?

/// The methods a server serves, by wire path.
public struct ServiceRegistry: Sendable {
    /// A class: every call holds its method's entry, and one reference count is cheaper than
    /// copying the method's names and handler.
    final class Entry: Sendable {
        let info: MethodInfo
        let handler: RawHandler

        init(info: MethodInfo, handler: @escaping RawHandler) {
            self.info = info
            self.handler = handler
        }
    }

    private(set) var entries: [String: Entry] = [:]

    public init() {}

    public mutating func register(_ info: MethodInfo, _ handler: @escaping RawHandler) {
        entries[info.path] = Entry(info: info, handler: handler)
    }

    public var methods: [MethodInfo] { entries.values.map(\.info).sorted { $0.path < $1.path } }

    func entry(for path: String) -> Entry? { entries[path] }

    /// Every registered method's path, e.g. `/liveroom.v1.RoomService/CreateRoom`.
    public var paths: [String] { entries.keys.sorted() }
}
