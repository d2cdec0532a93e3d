import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// The RTMP listener: encoders (OBS, ffmpeg) publish to `rtmp://HOST:PORT/APP/STREAM_KEY`.
/// Each connection runs its own `RTMPSession`; media goes to the `RTMPIngest`.
public final class RTMPServer: Sendable {
    public struct Configuration: Sendable {
        public var host: String
        public var port: Int
        /// The application name in publish URLs.
        public var app = "live"
        public var limits = RTMPLimits()
        /// A connection that sends nothing this long is closed (before and after publishing).
        public var readTimeout: TimeAmount = .seconds(30)
        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }
    }

    private typealias Connection = NIOAsyncChannel<RTMPMessage, RTMPMessage>

    private let configuration: Configuration
    private let ingest: any RTMPIngest
    private let group: EventLoopGroup
    private let logger: Logger
    private let state = NIOLockedValueBox(State())

    private struct State {
        var listener: NIOAsyncChannel<Connection, Never>?
        var connections: [ObjectIdentifier: Channel] = [:]
        var stopping = false
    }

    public init(configuration: Configuration, ingest: any RTMPIngest,
                group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger) {
        self.configuration = configuration
        self.ingest = ingest
        self.group = group
        self.logger = logger
    }

    /// The address it listens on.
    public var host: String { configuration.host }

    /// Binds the listener; returns the port (a port 0 becomes the chosen one). Idempotent.
    public func start() async throws -> Int {
        if let bound = state.withLockedValue({ $0.listener?.channel.localAddress?.port }) { return bound }
        let limits = configuration.limits
        let timeout = configuration.readTimeout
        let listener = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(.backlog, value: 256)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .bind(host: configuration.host, port: configuration.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try Self.configure(channel.pipeline.syncOperations, limits: limits, readTimeout: timeout)
                    return try Connection(wrappingChannelSynchronously: channel)
                }
            }
        state.withLockedValue { $0.listener = listener }
        let port = listener.channel.localAddress?.port ?? configuration.port
        logger.info("RTMP listening", metadata: ["endpoint": "\(configuration.host):\(port)", "app": "\(configuration.app)"])
        return port
    }

    /// The handlers of one RTMP connection, socket side first.
    public static func configure(_ pipeline: ChannelPipeline.SynchronousOperations, limits: RTMPLimits,
                                 readTimeout: TimeAmount?) throws {
        if let readTimeout {
            try pipeline.addHandler(IdleStateHandler(readTimeout: readTimeout))
            try pipeline.addHandler(CloseOnIdleHandler())
        }
        try pipeline.addHandler(RTMPAcknowledger())
        try pipeline.addHandler(RTMPHandshakeHandler())
        try pipeline.addHandler(ByteToMessageHandler(RTMPChunkDecoder(limits: limits)))
        try pipeline.addHandler(MessageToByteHandler(RTMPChunkEncoder()))
    }

    /// Serves connections until `stop()`.
    public func run() async throws {
        guard let listener = state.withLockedValue({ $0.listener }) else { return }
        try await listener.executeThenClose { inbound in
            try await withThrowingDiscardingTaskGroup { group in
                for try await connection in inbound {
                    group.addTask { await self.serve(connection) }
                }
            }
        }
    }

    /// Closes the listener and every connection (publishers see the connection drop and
    /// reconnect to the next daemon).
    public func stop() {
        let (listener, connections) = state.withLockedValue { s -> (Channel?, [Channel]) in
            s.stopping = true
            return (s.listener?.channel, Array(s.connections.values))
        }
        listener?.close(promise: nil)
        for c in connections { c.close(promise: nil) }
    }

    private func serve(_ connection: Connection) async {
        let channel = connection.channel
        let id = ObjectIdentifier(channel)
        let stopping = state.withLockedValue { s in
            if !s.stopping { s.connections[id] = channel }
            return s.stopping
        }
        defer { _ = state.withLockedValue { $0.connections.removeValue(forKey: id) } }
        if stopping {
            try? await channel.close()
            return
        }
        let peer = channel.remoteAddress.map { "\($0.ipAddress ?? "?"):\($0.port ?? 0)" } ?? "unknown"
        let logger: Logger = {
            var l = self.logger
            l[metadataKey: "rtmp_peer"] = "\(peer)"
            return l
        }()
        do {
            try await connection.executeThenClose { inbound, outbound in
                let writer = outbound
                var session = RTMPSession(
                    ingest: ingest, app: configuration.app, peer: peer, logger: logger,
                    onEnd: { reason in
                        logger.info("RTMP publication ended by the room", metadata: ["reason": "\(reason)"])
                        channel.close(promise: nil)
                    },
                    send: { try await writer.write($0) },
                    setPeerWindow: { size in channel.triggerUserOutboundEvent(RTMPAcknowledger.PeerWindow(size: size), promise: nil) })
                var reason = "publisher disconnected"
                do {
                    for try await message in inbound {
                        if try await session.handle(message) == .close {
                            reason = "connection closed by the server"
                            break
                        }
                    }
                } catch {
                    reason = "connection failed: \(error)"
                    await session.end(reason: reason)
                    throw error
                }
                await session.end(reason: reason)
            }
        } catch {
            logger.notice("RTMP connection closed", metadata: ["reason": "\(error)"])
        }
    }
}

/// Closes a connection that went quiet (an IdleStateHandler's read timeout).
public final class CloseOnIdleHandler: ChannelInboundHandler {
    public typealias InboundIn = NIOAny

    public init() {}

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .read {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}
