import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOPosix
import ServiceLifecycle
import Synchronization

/// Server settings. Defaults follow gRPC where gRPC has one.
public struct ServerConfiguration: Sendable {
    public var listen: [Endpoint]
    public var maxFrameSize = Frame.defaultMaxFrameSize
    public var maxConcurrentCallsPerConnection = 1024
    /// How long calls in flight may run on after a graceful shutdown begins.
    public var gracePeriod: TimeAmount = .seconds(10)
    /// File mode of the Unix socket: who may connect is decided by the file's permissions.
    public var unixSocketMode: mode_t = 0o660
    /// Called before a call's handler. It must decide from the call's method, metadata,
    /// transport and peer alone: a call whose HEADERS are identical to an admitted one on the
    /// same connection is admitted without asking again. nil admits every call as trusted.
    public var authenticate: (@Sendable (CallContext) -> Admission)?
    /// What a TCP connection may use before a call on it presents credentials (`.trusted`).
    public var untrusted = UntrustedBudget()
    /// Bytes written to a connection and not yet taken by the peer: above `high` the server
    /// stops reading from it and streams pause; they go on below `low`.
    public var outboundWaterMarks = (low: 256 * 1024, high: 1024 * 1024)
    /// A connection that has taken none of what was written to it for this long is closed.
    public var stalledPeerTimeout: TimeAmount = .seconds(30)
    /// Where calls and their latency are counted; nil counts nothing.
    public var metrics: RPCMetrics?

    public init(listen: [Endpoint]) { self.listen = listen }
}

/// What the authenticator decided about a call.
public enum Admission: Sendable, Equatable {
    /// Credentials were checked: the connection gets the full limits from now on.
    case trusted
    /// Allowed without credentials (an open method such as a health check): the connection
    /// stays on the small budget of `UntrustedBudget`.
    case open
    case refused(RPCStatus)
}

/// Limits for TCP connections that have not presented credentials: anyone who can reach the
/// port can open one, so each costs little and lives briefly.
public struct UntrustedBudget: Sendable {
    public var maxConcurrentCalls = 8
    /// Closed when no call has been open for this long (from connect: the preface timeout).
    public var idleTimeout: TimeAmount = .seconds(15)
    /// Across the server; further ones are closed at once.
    public var maxConnections = 512
    public init() {}
}

/// Counts a server's untrusted connections; shared by its listeners' connections.
final class UntrustedCount: Sendable {
    private let count = Atomic<Int>(0)
    let limit: Int
    init(limit: Int) { self.limit = limit }
    /// Takes a place if one is free.
    func enter() -> Bool {
        if count.wrappingAdd(1, ordering: .relaxed).newValue <= limit { return true }
        count.wrappingSubtract(1, ordering: .relaxed)
        return false
    }
    func leave() { count.wrappingSubtract(1, ordering: .relaxed) }
}

/// The server's connections, so that a shutdown can drain them while the listeners stay open:
/// a connection made during the drain gets a GOAWAY that says why, instead of being refused by
/// the operating system (NIOExtras' `ServerQuiescingHelper` closes the listeners first).
final class ConnectionTracker: Sendable {
    private struct State {
        var open: [ObjectIdentifier: Channel] = [:]
        var draining = false
        var drained: EventLoopPromise<Void>?
    }

    private let state = NIOLockedValueBox(State())

    /// Tracks `channel` until it closes; false (and not tracked) once a drain has begun.
    func admit(_ channel: Channel) -> Bool {
        let admitted = state.withLockedValue { s -> Bool in
            guard !s.draining else { return false }
            s.open[ObjectIdentifier(channel)] = channel
            return true
        }
        guard admitted else { return false }
        let id = ObjectIdentifier(channel)
        channel.closeFuture.whenComplete { [state] _ in
            let done = state.withLockedValue { s -> EventLoopPromise<Void>? in
                s.open[id] = nil
                guard s.draining, s.open.isEmpty, let p = s.drained else { return nil }
                s.drained = nil
                return p
            }
            done?.succeed()
        }
        return true
    }

    /// Tells every open connection to drain (`ChannelShouldQuiesceEvent`); `promise` succeeds
    /// once all of them have closed.
    func drain(_ promise: EventLoopPromise<Void>) {
        let channels = state.withLockedValue { s -> [Channel] in
            s.draining = true
            if !s.open.isEmpty { s.drained = promise }
            return Array(s.open.values)
        }
        if channels.isEmpty {
            promise.succeed()
            return
        }
        for c in channels { c.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent()) }
    }
}

/// Why a server could not start.
public struct ServerStartError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// The RPC server: listeners on Unix and TCP sockets feeding per-connection call multiplexers.
/// As a `Service`, `run()` serves until graceful shutdown, then drains.
public final class RPCServer: Service, Sendable {
    private let configuration: ServerConfiguration
    private let registry: ServiceRegistry
    private let group: EventLoopGroup
    private let logger: Logger
    private let state = NIOLockedValueBox<State>(State())
    private let untrustedCount: UntrustedCount
    private let connections = ConnectionTracker()

    private struct State {
        var channels: [Channel] = []
        var bound: [Endpoint] = []
        var started = false
        var shutdownFuture: EventLoopFuture<Void>?
    }

    public init(configuration: ServerConfiguration, registry: ServiceRegistry,
                group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger) {
        self.configuration = configuration
        self.registry = registry
        self.group = group
        self.logger = logger
        self.untrustedCount = UntrustedCount(limit: configuration.untrusted.maxConnections)
    }

    /// The addresses actually bound (a TCP port 0 becomes the chosen port).
    public var boundEndpoints: [Endpoint] { state.withLockedValue { $0.bound } }

    /// Binds every listener. Idempotent.
    @discardableResult
    public func start() async throws -> [Endpoint] {
        if state.withLockedValue({ $0.started }) { return boundEndpoints }
        var channels: [Channel] = []
        var bound: [Endpoint] = []
        do {
            for endpoint in configuration.listen {
                let channel = try await bind(endpoint)
                channels.append(channel)
                if case .tcp(let host, _) = endpoint, let port = channel.localAddress?.port {
                    bound.append(.tcp(host: host, port: port))
                } else {
                    bound.append(endpoint)
                }
                logger.info("listening", metadata: ["endpoint": "\(bound.last!)"])
            }
        } catch {
            for c in channels { try? await c.close() }
            // A socket file of a listener that is closed again would only mislead.
            for case .unix(let path) in bound { unlink(path) }
            throw error
        }
        state.withLockedValue {
            $0.channels = channels
            $0.bound = bound
            $0.started = true
        }
        return bound
    }

    public func run() async throws {
        try await start()
        let closed = state.withLockedValue { s in
            EventLoopFuture.andAllComplete(s.channels.map(\.closeFuture), on: group.any())
        }
        try await withGracefulShutdownHandler {
            try await closed.get()
            await self.waitForShutdown()
        } onGracefulShutdown: {
            self.initiateShutdown()
        }
    }

    /// Stops accepting, sends GOAWAY on every connection, lets calls finish within the grace
    /// period, then closes. Returns when every connection is closed.
    public func shutdown() async {
        initiateShutdown()
        await waitForShutdown()
    }

    /// Connections drain (GOAWAY, calls finish within the grace period); connections made
    /// meanwhile are sent GOAWAY at once; the listeners close when every connection has.
    private func initiateShutdown() {
        let loop = group.any()
        let listeners = state.withLockedValue { s -> [Channel]? in
            guard s.shutdownFuture == nil else { return nil }
            let drained = loop.makePromise(of: Void.self)
            let channels = s.channels
            s.shutdownFuture = drained.futureResult.flatMap {
                EventLoopFuture.andAllComplete(channels.map { $0.close() }, on: loop)
            }
            connections.drain(drained)
            return channels
        }
        guard let listeners else { return }
        logger.info("shutting down: draining calls in flight", metadata: ["listeners": "\(listeners.count)"])
        for case .unix(let path) in configuration.listen {
            state.withLockedValue { $0.shutdownFuture }?.whenComplete { _ in unlink(path) }
        }
    }

    private func waitForShutdown() async {
        if let f = state.withLockedValue({ $0.shutdownFuture }) { try? await f.get() }
    }

    private func bind(_ endpoint: Endpoint) async throws -> Channel {
        let configuration = self.configuration
        let registry = self.registry
        let logger = self.logger
        let untrustedCount = self.untrustedCount
        let connections = self.connections
        let transport: Transport
        if case .unix = endpoint { transport = .unix } else { transport = .tcp }
        var bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    // At the file-descriptor limit, accepting again at once would spin a core.
                    try channel.pipeline.syncOperations.addHandler(AcceptBackoffHandler(shouldForwardIOErrorCaught: false))
                }
            }
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let limits = ServerConnectionHandler.Limits(
                        maxFrameSize: configuration.maxFrameSize,
                        maxConcurrentCalls: configuration.maxConcurrentCallsPerConnection,
                        gracePeriod: configuration.gracePeriod,
                        untrusted: configuration.untrusted,
                        stalledPeerTimeout: configuration.stalledPeerTimeout)
                    // A peer that does not read is not read from either: what is written to it stays bounded.
                    try channel.pipeline.syncOperations.addHandler(BackPressureHandler())
                    let untrusted = transport == .tcp && configuration.authenticate != nil ? untrustedCount : nil
                    let handler = ServerConnectionHandler(registry: registry, limits: limits, transport: transport,
                                                          authenticate: configuration.authenticate, untrusted: untrusted,
                                                          metrics: configuration.metrics, logger: logger)
                    if !connections.admit(channel) { handler.refuseAsShuttingDown() }
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
            .childChannelOption(.allowRemoteHalfClosure, value: false)
            .childChannelOption(.writeBufferWaterMark, value: .init(low: configuration.outboundWaterMarks.low,
                                                                     high: configuration.outboundWaterMarks.high))
            // Most connections read little (a viewer sends only flow-control updates): start read
            // buffers small and let NIO grow them for connections that send much (publishers).
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 256, maximum: 65536))
        switch endpoint {
        case .tcp(let host, let port):
            bootstrap = bootstrap
                .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
                .childChannelOption(.socketOption(.so_keepalive), value: 1)
            do {
                return try await bootstrap.bind(host: host, port: port).get()
            } catch {
                throw ServerStartError("cannot listen on TCP \(endpoint): \(error)")
            }
        case .unix(let path):
            try await Self.clearStaleSocket(path, group: group)
            let channel: Channel
            do {
                channel = try await bootstrap.bind(unixDomainSocketPath: path).get()
            } catch {
                throw ServerStartError("cannot listen on Unix socket \(path): \(error)")
            }
            if chmod(path, configuration.unixSocketMode) != 0 {
                logger.warning("could not set the mode of \(path): errno \(errno)")
            }
            return channel
        }
    }

    /// A socket file nobody answers on is left over from a crash: remove it. One that answers
    /// belongs to a running server: refuse to take it over.
    static func clearStaleSocket(_ path: String, group: EventLoopGroup) async throws {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        guard (st.st_mode & S_IFMT) == S_IFSOCK else {
            throw ServerStartError("\(path) exists and is not a socket; refusing to replace it")
        }
        let live: Bool
        do {
            let channel = try await ClientBootstrap(group: group)
                .connectTimeout(.seconds(2))
                .connect(unixDomainSocketPath: path).get()
            try? await channel.close()
            live = true
        } catch {
            live = false
        }
        if live {
            throw ServerStartError("another server is already listening on \(path); stop it or choose another socket path")
        }
        unlink(path)
    }
}
