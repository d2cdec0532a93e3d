import CoreMetrics
import LiveRoomDomain
import LiveRoomMessages
import LiveRoomRPC
import NIOCore

/// A platform connector reached over the RPC protocol (`liveroom.v1.PlatformConnector`).
/// Connects on first use and again after the connection drops.
public actor RPCPlatformConnector: PlatformClient {
    private let platform: PlatformSettings
    private let endpoint: Endpoint
    private var client: RPCClient?
    private let errors: CoreMetrics.Counter?

    public init(platform: PlatformSettings, errors: CoreMetrics.Counter? = nil) throws {
        self.platform = platform
        self.errors = errors
        let address = platform.connector
        if address.hasPrefix("unix:") {
            endpoint = .unix(path: String(address.dropFirst(5)))
        } else {
            do { endpoint = try Endpoint.parseTCP(address) } catch {
                throw RoomError(.invalidArgument, "platform \(platform.id): connector \"\(address)\" is neither unix:PATH nor HOST:PORT")
            }
        }
    }

    private var metadata: Metadata {
        var m = Metadata()
        if !platform.token.isEmpty { m.add("authorization", "Bearer \(platform.token)") }
        return m
    }

    private func connected() async throws -> RPCClient {
        if let client { return client }
        var configuration = ClientConfiguration()
        configuration.connectTimeout = .milliseconds(min(platform.timeoutMs, 2000))
        do {
            let c = try await RPCClient.connect(to: endpoint, configuration: configuration)
            client = c
            return c
        } catch let status as RPCStatus {
            throw RoomError(.unavailable, "platform \(platform.id): connector at \(endpoint) is unreachable: \(status.message)")
        }
    }

    private func call<I, O>(_ method: ProtoMethod<I, O>, _ request: I, timeoutMs: Int64? = nil) async throws -> O {
        do {
            return try await attempt(method, request, timeoutMs: timeoutMs)
        } catch {
            errors?.increment()
            throw error
        }
    }

    private func attempt<I, O>(_ method: ProtoMethod<I, O>, _ request: I, timeoutMs: Int64? = nil) async throws -> O {
        var ms = timeoutMs ?? platform.timeoutMs
        var callers = ""
        // The caller's deadline bounds the platform's time too: an answer after it is of no use.
        if let deadline = CallDeadline.current {
            let left = max(1, (deadline - .now()).nanoseconds / 1_000_000)
            if left < ms {
                ms = left
                callers = " (what was left of the caller's deadline)"
            }
        }
        for attempt in 0..<2 {
            let c = try await connected()
            do {
                return try await c.unary(method, request, metadata: metadata, timeout: .milliseconds(ms))
            } catch let status as RPCStatus {
                switch status.code {
                case .deadlineExceeded:
                    throw RoomError(.deadlineExceeded, "platform \(platform.id) did not answer \(method.info.name) within \(ms) ms\(callers)")
                case .unavailable where attempt == 0 && !status.message.hasPrefix("platform"):
                    // The connection dropped (connector restarted): reconnect once.
                    await c.close()
                    client = nil
                    continue
                default:
                    throw RoomError(.unavailable, "platform \(platform.id) failed \(method.info.name): \(status.code.name): \(status.message)")
                }
            }
        }
        throw RoomError(.unavailable, "platform \(platform.id): connector at \(endpoint) is unreachable")
    }

    public func createRoom(_ request: CreatePlatformRoomRequest) async throws -> CreatePlatformRoomResponse {
        try await call(PlatformConnector.createPlatformRoom, request)
    }

    public func rotateKey(platformRoomId: String) async throws -> RotatePlatformKeyResponse {
        var r = RotatePlatformKeyRequest()
        r.platformRoomId = platformRoomId
        return try await call(PlatformConnector.rotatePlatformKey, r)
    }

    public func status(platformRoomId: String) async throws -> GetPlatformRoomStatusResponse {
        var r = GetPlatformRoomStatusRequest()
        r.platformRoomId = platformRoomId
        return try await call(PlatformConnector.getPlatformRoomStatus, r)
    }

    public func close(platformRoomId: String, requestId: String) async throws {
        var r = ClosePlatformRoomRequest()
        r.platformRoomId = platformRoomId
        r.requestId = requestId
        _ = try await call(PlatformConnector.closePlatformRoom, r)
    }

    public func probe() async -> String? {
        do {
            let c = try await connected()
            _ = try await c.ping()
            return nil
        } catch let e as RoomError {
            return e.message
        } catch {
            client = nil
            return "\(error)"
        }
    }
}
