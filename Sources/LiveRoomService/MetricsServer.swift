import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import LiveRoomRPC
import Synchronization

/// The Prometheus scrape endpoint: `GET /metrics` over HTTP/1.1 on its own listener, so
/// scraping needs neither our RPC protocol nor the TCP token. Served by Hummingbird, like
/// playback: one HTTP stack.
final class MetricsServer: Sendable {
    /// Produces the exposition text (gauges refreshed first).
    typealias Render = @Sendable () async -> String

    private let host: String
    private let port: Int
    private let render: Render
    private let logger: Logger
    private let running = Mutex<(task: Task<Void, any Error>, port: Int)?>(nil)

    init(host: String, port: Int, render: @escaping Render, logger: Logger) {
        self.host = host
        self.port = port
        self.render = render
        self.logger = logger
    }

    /// Binds; returns the port (0 becomes the chosen one). Idempotent.
    func start() async throws -> Int {
        if let bound = running.withLock({ $0?.port }) { return bound }
        let render = self.render
        let router = Router()
        let scrape: @Sendable (Request, BasicRequestContext) async throws -> Response = { _, _ in
            var headers = HTTPFields()
            headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: await render())))
        }
        router.get("/metrics", use: scrape)
        router.get("/", use: scrape)
        let (host, port, logger) = (self.host, self.port, self.logger)
        let (task, actual) = try await startHTTP { onBound in
            Application(router: router, configuration: .init(address: .hostname(host, port: port), serverName: "liveroomd"),
                        onServerRunning: { channel in onBound(channel.localAddress?.port ?? 0) }, logger: logger)
        }
        running.withLock { $0 = (task, actual) }
        logger.info("metrics listening", metadata: ["endpoint": "\(host):\(actual)", "path": "/metrics"])
        return actual
    }

    func stop() {
        running.withLock { $0 }?.task.cancel()
    }
}
