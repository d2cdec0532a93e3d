import Foundation
import LiveRoomDomain
import LiveRoomMessages
import LiveRoomStore
import LiveRoomRPC
import LiveRoomRTMP
import CoreMetrics
import Logging
import NIOCore
import Prometheus
import NIOPosix
import ServiceLifecycle
import Synchronization

/// liveroomd: every service wired onto one RPC server, run until SIGTERM/SIGINT.
public final class Daemon: Service, Sendable {
    public let configuration: DaemonConfiguration
    public let health: HealthState
    public let rooms: RoomRegistry
    private let store: SQLiteStore
    private let server: RPCServer
    private let rtmp: RTMPServer?
    private let metricsServer: MetricsServer?
    private let logger: Logger
    private let relay: RelayManager
    private let mirror: MirrorSupervisor
    private let playback: PlaybackServer?
    public let playbackURLs = PlaybackURLs()
    /// The bound RTMP port, once known (0 before).
    private let ownIngest = BoundPort()
    /// The HTTP listener, running from `start()` until the daemon stops.
    private let httpTask = Mutex<Task<Void, any Error>?>(nil)


    public init(configuration: DaemonConfiguration, logger: Logger) throws {
        self.configuration = configuration
        self.logger = logger
        var listen: [Endpoint] = [.unix(path: configuration.socketPath)]
        if let tcp = configuration.tcp { listen.append(try Endpoint.parseTCP(tcp)) }

        var storeOptions = SQLiteStore.Options()
        storeOptions.maxPageCount = configuration.storeMaxPageCount
        let store = try SQLiteStore(directory: configuration.dataDir, options: storeOptions)
        let clock = AdjustableClock()
        var builtin = PlatformSettings(id: PlatformSettings.builtinID, displayName: "LiveRoom (built-in)")
        builtin.keyTTLMs = configuration.keyTTLSeconds * 1000
        // Metrics go to a registry of this daemon's own (no global bootstrap), or nowhere.
        let prometheus = PrometheusCollectorRegistry()
        var prometheusFactory = PrometheusMetricsFactory(registry: prometheus)
        // Calls take tens of microseconds; the default buckets start at 5 ms.
        prometheusFactory.defaultDurationHistogramBuckets = [
            .microseconds(50), .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2),
            .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250),
            .milliseconds(500), .seconds(1), .seconds(2), .seconds(5), .seconds(10), .seconds(30),
        ]
        let factory: any MetricsFactory = configuration.metrics == nil ? NOOPMetricsHandler.instance : prometheusFactory
        let metrics = RoomMetrics(factory: factory)
        var connectors: [String: PlatformClient] = [:]
        for p in configuration.platforms {
            connectors[p.id] = try RPCPlatformConnector(platform: p, errors: metrics.connectorError(platform: p.id))
        }
        var media = MediaSettings()
        media.publisherIdleTimeoutMs = configuration.publisherIdleTimeoutMs
        media.viewerQueue.skipBytes = configuration.viewerQueueBytes
        media.viewerQueue.maxSkips = configuration.viewerMaxSkips
        media.viewerQueue.maxStallMs = configuration.viewerMaxStallMs
        rooms = RoomRegistry(store: store, platforms: [builtin] + configuration.platforms, connectors: connectors,
                             builtin: configuration.builtin, clock: clock, media: media, metrics: metrics)
        self.store = store

        // Relays and mirrors need to know our own ingest (to refuse loops) once it is bound.
        let ownIngest = self.ownIngest
        var ownHosts: Set<String> = ["127.0.0.1", "localhost", "::1", "0.0.0.0", "::"]
        if let address = configuration.rtmp, case .tcp(let host, _) = try Endpoint.parseTCP(address) { ownHosts.insert(host.lowercased()) }
        var relayContext = RelayContext(registry: rooms, isOwnIngest: { [ownHosts] url in
            let port = ownIngest.port.load(ordering: .relaxed)
            return port != 0 && url.port == port && ownHosts.contains(url.host.lowercased())
        }, metrics: RelayMetrics(factory: factory), logger: logger)
        relayContext.retry = Backoff(baseMs: 1000, capMs: configuration.relayRetryMaxMs)
        relay = RelayManager(context: relayContext, store: store)
        mirror = MirrorSupervisor(registry: rooms, client: relayContext.client, retry: relayContext.retry, logger: logger)

        var registry = ServiceRegistry()
        var services = [Health.name, RoomService.name, MediaService.name, AudienceService.name]
        RoomServiceHandlers.register(rooms, relay: relay, mirror: mirror, in: &registry)
        let tokens = ViewerTokens(key: try SQLiteStore.loadOrCreateKey(configuration.dataDir, name: "viewer-token.key"))
        MediaServiceHandlers.register(rooms, viewerMerge: configuration.viewerMergeMs > 0 ? .milliseconds(Int64(configuration.viewerMergeMs)) : nil,
                                      tokens: tokens, urls: playbackURLs, in: &registry)
        AudienceServiceHandlers.register(rooms, in: &registry)
        ReportAudienceHandler.register(rooms, AudienceIngestor(store: store, clock: clock, metrics: metrics), platforms: configuration.platforms, in: &registry)
        if configuration.enableTestService {
            InteropService.register(in: &registry)
            TestControlHandlers.register(clock, in: &registry)
            services.append(TestService.name)
        }
        let health = HealthState(services: services)
        HealthService.register(health, in: &registry)
        self.health = health

        var serverConfiguration = ServerConfiguration(listen: listen)
        serverConfiguration.maxFrameSize = configuration.maxFrameSize
        serverConfiguration.maxConcurrentCallsPerConnection = configuration.maxConcurrentCalls
        serverConfiguration.gracePeriod = .seconds(Int64(configuration.gracePeriodSeconds))
        serverConfiguration.authenticate = TCPAuthenticator(token: configuration.tcpToken,
                                                            connectorTokens: configuration.platforms.map(\.token)).check
        if configuration.metrics != nil { serverConfiguration.metrics = RPCMetrics(factory: factory, methods: registry.paths) }
        self.server = RPCServer(configuration: serverConfiguration, registry: registry, logger: logger)

        if let address = configuration.rtmp, case .tcp(let host, let port) = try Endpoint.parseTCP(address) {
            var rtmpConfiguration = RTMPServer.Configuration(host: host, port: port)
            rtmpConfiguration.app = configuration.rtmpApp
            rtmp = RTMPServer(configuration: rtmpConfiguration, ingest: RTMPRoomIngest(registry: rooms), logger: logger)
        } else {
            rtmp = nil
        }

        if let address = configuration.http, case .tcp(let host, let port) = try Endpoint.parseTCP(address) {
            var settings = PlaybackServer.Settings()
            settings.host = host
            settings.port = port
            settings.publicURL = configuration.httpPublicURL
            settings.segmentTargetMs = configuration.hlsSegmentMs
            settings.partTargetMs = configuration.hlsPartMs
            settings.viewerQueue = media.viewerQueue
            settings.requestTimeout = .milliseconds(Int64(configuration.httpRequestTimeoutMs))
            settings.merge = configuration.viewerMergeMs > 0 ? .milliseconds(configuration.viewerMergeMs) : nil
            playback = PlaybackServer(registry: rooms, tokens: tokens, settings: settings, urls: playbackURLs, factory: factory, logger: logger)
        } else {
            playback = nil
        }

        if let address = configuration.metrics, case .tcp(let host, let port) = try Endpoint.parseTCP(address) {
            let roomsGauge = { (status: RoomStatus) in
                Meter(label: "liveroom_rooms", dimensions: [("status", Self.statusLabel(status))], factory: factory)
            }
            let gauges = [RoomStatus.notStarted, .live, .ended].map { ($0, roomsGauge($0)) }
            metricsServer = MetricsServer(host: host, port: port, render: { [store] in
                // Room counts come from the store at scrape time, so they are right across restarts.
                if let counts = try? await store.roomCounts() {
                    for (status, gauge) in gauges { gauge.set(counts[status] ?? 0) }
                }
                return prometheus.emitToString()
            }, logger: logger)
        } else {
            metricsServer = nil
        }
    }

    static func statusLabel(_ s: RoomStatus) -> String {
        switch s {
        case .notStarted: "not_started"
        case .live: "live"
        case .ended: "ended"
        default: "unspecified"
        }
    }

    /// Binds the listeners; returns what was bound (a TCP port 0 becomes the real port).
    @discardableResult
    public func start() async throws -> [Endpoint] {
        let closed = try await store.closeOutOnlineViewers()
        if closed > 0 { logger.info("closed out viewer sessions left open by the last stop", metadata: ["viewers": "\(closed)"]) }
        if configuration.tcp != nil && configuration.tcpToken == nil {
            logger.warning("TCP is enabled without tcp_token: every call over TCP except Health will be refused")
        }
        let relay = self.relay
        // Weak: the relay holds the registry, and a cycle would keep the store open past exit.
        await rooms.observeRooms { [weak relay] room in Task { await relay?.roomLoaded(room) } }
        let endpoints = try await server.start()
        do {
            try await startMedia()
        } catch {
            // Nothing half-started is left behind (the Unix socket file above all).
            rtmp?.stop()
            metricsServer?.stop()
            httpTask.withLock { $0 }?.cancel()
            await server.shutdown()
            throw error
        }
        return endpoints
    }

    private func startMedia() async throws {
        if let rtmp {
            let host = rtmp.host
            let port: Int
            do { port = try await rtmp.start() } catch {
                throw ServerStartError("cannot listen for RTMP on \(configuration.rtmp ?? host): \(error) (set rtmp = HOST:PORT or rtmp = off)")
            }
            ownIngest.port.store(port, ordering: .relaxed)
            if !configuration.pushServerConfigured {
                // A wildcard address is no place to push to; name loopback and say how to change it.
                let (advertised, wildcard) = Self.advertised(host)
                if wildcard { logger.notice("RTMP listens on all addresses: set push_server to the address broadcasters reach") }
                await rooms.setPushServer("rtmp://\(advertised):\(port)/\(configuration.rtmpApp)")
            }
        }
        if let metricsServer, let address = configuration.metrics {
            do { _ = try await metricsServer.start() } catch {
                throw ServerStartError("cannot listen for metrics on \(address): \(error)")
            }
        }
        if let playback { try await startPlayback(playback) }
    }

    /// The host to put in URLs we hand out for a listener on `host`: a wildcard address is no
    /// place to connect to, so loopback stands in (and the caller says how to change it).
    static func advertised(_ host: String) -> (host: String, wildcard: Bool) {
        let wildcard = host == "0.0.0.0" || host == "::" || host == "[::]"
        return (wildcard ? "127.0.0.1" : (host.contains(":") && !host.hasPrefix("[") ? "[\(host)]" : host), wildcard)
    }

    /// Runs the HTTP listener until the daemon stops; returns once it is bound.
    private func startPlayback(_ playback: PlaybackServer) async throws {
        guard httpTask.withLock({ $0 == nil }) else { return }  // start() runs again inside the ServiceGroup
        let running: (task: Task<Void, any Error>, port: Int)
        do {
            running = try await startHTTP { onBound in playback.application { port in onBound(port) } }
        } catch {
            throw ServerStartError("cannot listen for HTTP on \(configuration.http ?? ""): \(error) (set http = HOST:PORT or http = off)")
        }
        httpTask.withLock { $0 = running.task }
        let port = running.port
        let host = playback.settings.host
        let (advertised, wildcard) = Self.advertised(host)
        if wildcard && playback.settings.publicURL == nil {
            logger.notice("HTTP listens on all addresses: set http_public_url to the address players reach")
        }
        let base = playback.settings.publicURL ?? "http://\(advertised):\(port)"
        playbackURLs.set(base)
        if !configuration.playURLBaseConfigured { await rooms.setPlayURLBase(base + "/play/") }
        logger.info("HTTP listening \(host):\(port)", metadata: ["players": "\(base)/play/ROOM"])
    }

    public func run() async throws {
        // Run inside the ServiceGroup, whose signal handlers exist by now: whoever waits for
        // "ready" may send SIGTERM at once and get a graceful stop.
        let endpoints = try await start()
        logger.info("liveroomd ready", metadata: ["endpoints": "\(endpoints.map(\.description).joined(separator: " "))"])
        let rooms = self.rooms
        let flusher = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                await rooms.flushStats()
            }
        }
        defer { flusher.cancel() }
        let (store, health) = (self.store, self.health)
        let storeWatch = Task {
            // Health tells the truth about the store: NOT_SERVING while writes fail.
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                let writable = store.isWritable ? true : await store.probeWritable()
                await health.setStoreWritable(writable)
            }
        }
        defer { storeWatch.cancel() }
        defer { metricsServer?.stop() }
        let (mirror, pollMs) = (self.mirror, configuration.mirrorPollMs)
        let mirroring = Task { await mirror.run(intervalMs: pollMs) }
        defer { mirroring.cancel() }
        let rtmp = self.rtmp
        let rtmpTask = Task { try await rtmp?.run() }
        defer { rtmp?.stop() }
        defer { httpTask.withLock { $0 }?.cancel() }
        try await withGracefulShutdownHandler {
            try await server.run()
            rtmp?.stop()
            _ = await rtmpTask.result
            mirroring.cancel()
            httpTask.withLock { $0 }?.cancel()
            await playback?.shutDown()
            await relay.stopAll()
            await rooms.flushStats()
        } onGracefulShutdown: {
            rtmp?.stop()
            Task {
                await self.health.beginDraining()
                await self.health.finishWatchers()
            }
        }
        logger.info("stopped")
    }

    /// Runs the daemon until SIGTERM or SIGINT, then drains gracefully.
    public func runUntilSignalled() async throws {
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: self)],
            gracefulShutdownSignals: [.sigterm, .sigint],
            cancellationSignals: [],
            logger: logger))
        try await group.run()
    }
}

/// Calls over TCP must carry `authorization: Bearer TOKEN`; Unix-socket calls are trusted as far
/// as the socket file's permissions allow. Health is open on both so probes need no secret; a
/// connection that has only made open calls stays on the RPC server's small untrusted budget.
/// Connectors' audience reports take their platform's connector token instead.
struct TCPAuthenticator: Sendable {
    /// `Bearer TOKEN`, made once: this runs for every call.
    private let expected: String?
    private let connectorTokens: [String]
    private let healthPrefix = "/\(Health.name)/"
    private let reportPaths = [AudienceService.reportAudience.info.path, AudienceService.reportAudienceBatch.info.path]

    init(token: String?, connectorTokens: [String] = []) {
        expected = token.map { "Bearer \($0)" }
        self.connectorTokens = connectorTokens.filter { !$0.isEmpty }.map { "Bearer \($0)" }
    }

    func check(_ context: CallContext) -> Admission {
        guard context.transport == .tcp else { return .trusted }
        if context.path.hasPrefix(healthPrefix) {
            return context.metadata["authorization"].map { presented in expected.map { StreamKey.equal(presented, $0) } ?? false } == true
                ? .trusted : .open
        }
        if reportPaths.contains(context.path) {
            guard let presented = context.metadata["authorization"] else {
                return .refused(RPCStatus(.unauthenticated,
                    "audience reports need metadata \"authorization: Bearer <the platform's connector token>\""))
            }
            if connectorTokens.contains(where: { StreamKey.equal(presented, $0) }) { return .trusted }
            if let expected, StreamKey.equal(presented, expected) {
                return .refused(RPCStatus(.permissionDenied,
                    "audience reports take the platform's connector token, not tcp_token: the token names the platform"))
            }
            return .refused(RPCStatus(.unauthenticated,
                "the authorization metadata is not any platform's connector token (check the token in the platform's config section)"))
        }
        guard let expected else {
            return .refused(RPCStatus(.unauthenticated, "calls over TCP are disabled: the daemon has no tcp_token configured"))
        }
        guard let presented = context.metadata["authorization"] else {
            return .refused(RPCStatus(.unauthenticated, "calls over TCP need metadata \"authorization: Bearer <tcp_token>\""))
        }
        guard StreamKey.equal(presented, expected) else {
            return .refused(RPCStatus(.unauthenticated, "the authorization token is not valid"))
        }
        return .trusted
    }
}

/// A listener's port, set once it is bound.
final class BoundPort: Sendable {
    let port = Atomic<Int>(0)
}
