import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// The Prometheus scrape endpoint: `GET /metrics` over HTTP/1.1 on its own listener, so
/// scraping needs neither our RPC protocol nor the TCP token.
final class MetricsServer: Sendable {
    /// Produces the exposition text (gauges refreshed first).
    typealias Render = @Sendable () async -> String

    private let host: String
    private let port: Int
    private let render: Render
    private let logger: Logger
    private let channel = NIOLockedValueBox<Channel?>(nil)

    init(host: String, port: Int, render: @escaping Render, logger: Logger) {
        self.host = host
        self.port = port
        self.render = render
        self.logger = logger
    }

    /// Binds; returns the port (0 becomes the chosen one). Idempotent.
    func start() async throws -> Int {
        if let bound = channel.withLockedValue({ $0?.localAddress?.port }) { return bound }
        let render = self.render
        let bound = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            // At the file-descriptor limit, accepting again at once would spin a core (the
            // bootstrap's async bind adds this handler; this one does not).
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(AcceptBackoffHandler(shouldForwardIOErrorCaught: false))
                }
            }
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(MetricsHTTPHandler(render: render))
                }
            }
            .bind(host: host, port: port).get()
        channel.withLockedValue { $0 = bound }
        let actual = bound.localAddress?.port ?? port
        logger.info("metrics listening", metadata: ["endpoint": "\(host):\(actual)", "path": "/metrics"])
        return actual
    }

    func stop() {
        channel.withLockedValue { $0 }?.close(promise: nil)
    }
}

/// Answers `GET /metrics` (and `/`), 404 elsewhere, 405 for other methods.
final class MetricsHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let render: MetricsServer.Render
    private var head: HTTPRequestHead?

    init(render: @escaping MetricsServer.Render) { self.render = render }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h): head = h
        case .body: break
        case .end:
            guard let head else { return }
            self.head = nil
            let path = head.uri.split(separator: "?").first.map(String.init) ?? head.uri
            guard head.method == .GET || head.method == .HEAD else {
                respond(context, head, .methodNotAllowed, "only GET is served here\n")
                return
            }
            guard path == "/metrics" || path == "/" else {
                respond(context, head, .notFound, "metrics are at /metrics\n")
                return
            }
            let loop = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            let render = self.render
            Task {
                let text = await render()
                loop.eventLoop.execute {
                    let (handler, context) = loop.value
                    handler.respond(context, head, .ok, text, contentType: "text/plain; version=0.0.4; charset=utf-8")
                }
            }
        }
    }

    private func respond(_ context: ChannelHandlerContext, _ request: HTTPRequestHead, _ status: HTTPResponseStatus, _ body: String,
                         contentType: String = "text/plain; charset=utf-8") {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: "\(body.utf8.count)")
        let keepAlive = request.isKeepAlive
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: status, headers: headers))), promise: nil)
        if request.method != .HEAD {
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: body)))), promise: nil)
        }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            if !keepAlive { channel.close(promise: nil) }
        }
    }
}
