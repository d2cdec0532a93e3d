import Foundation
import LiveRoomRPC

/// How a command-line tool reaches the daemon.
public struct ConnectionOptions: Sendable {
    public var socket: String?
    public var tcp: String?
    public var token: String?

    public init(socket: String?, tcp: String?, token: String?) {
        self.socket = socket
        self.tcp = tcp
        self.token = token
    }

    public func endpoint() throws -> Endpoint {
        if let tcp { return try Endpoint.parseTCP(tcp) }
        return .unix(path: socket ?? "./liveroomd.sock")
    }

    /// Connects, with the token as `authorization: Bearer …` metadata on every call.
    public func connect() async throws -> RPCClient {
        var configuration = ClientConfiguration()
        if let token = token ?? ProcessInfo.processInfo.environment["LIVEROOM_TCP_TOKEN"] {
            configuration.defaultMetadata.add("authorization", "Bearer \(token)")
        }
        return try await RPCClient.connect(to: try endpoint(), configuration: configuration)
    }
}
