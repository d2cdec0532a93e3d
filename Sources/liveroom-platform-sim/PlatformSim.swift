import ArgumentParser
import Foundation
import LiveRoomDomain
import LiveRoomMessages
import LiveRoomRPC
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import LiveRoomTesting
import NIOHTTP1

/// liveroom-platform-sim: behaves like a third-party live platform behind a connector, with its
/// own room ids, push servers and expiring keys. Flags make it slow or failing for tests and demos.
@main
struct PlatformSim: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "liveroom-platform-sim",
        abstract: "A simulated external live platform serving liveroom.v1.PlatformConnector.")

    @Option(help: "Unix socket to serve on.")
    var socket: String?

    @Option(help: "TCP HOST:PORT to serve on.")
    var tcp: String?

    @Option(help: "The platform's name (used in its room ids and URLs).")
    var name = "sim"

    @Option(help: "Token the daemon must present (authorization: Bearer TOKEN).")
    var token: String?

    @Option(name: .customLong("delay-ms"), help: "Answer every call this late.")
    var delayMs: Int64 = 0

    @Flag(help: "Fail every call with UNAVAILABLE, like a platform outage.")
    var fail = false

    @Option(name: .customLong("key-ttl-seconds"), help: "Lifetime of the keys it issues.")
    var keyTTLSeconds: Int64 = 24 * 3600

    @Option(name: .customLong("state-file"), help: "Write the platform's rooms here as JSON after every change.")
    var stateFile: String?

    @Option(name: .customLong("report-to"), help: "Stream audience reports for its rooms to liveroomd at unix:PATH or HOST:PORT.")
    var reportTo: String?

    @Option(name: .customLong("report-interval-ms"), help: "How often each open room gets a report.")
    var reportIntervalMs: Int64 = 1000

    @Option(name: .customLong("reconnect-every"), help: "Drop the report stream after this many reports and resend what was not acknowledged (0: never).")
    var reconnectEvery = 0

    @Option(name: .customLong("media-rtmp"), help: "The platform's media server (nginx-rtmp), rtmp://HOST:PORT/APP: handed out as push server and pull URL.")
    var mediaRTMP: String?

    @Option(name: .customLong("callbacks"), help: "HOST:PORT for the media server's on_publish/on_done callbacks (nginx-rtmp's notify).")
    var callbacks: String?

    @Flag(help: "Start a real nginx-rtmp of its own on a free port as the platform's media server (needs nginx and libnginx-mod-rtmp).")
    var nginx = false

    @Option(name: .customLong("live-http-flv"), help: "Every open room is live, pulled from this HTTP-FLV URL (a platform that offers HTTP-FLV pulls).")
    var liveHTTPFLV: String?

    func run() async throws {
        var listen: [Endpoint] = []
        if let socket { listen.append(.unix(path: socket)) }
        if let tcp { listen.append(try Endpoint.parseTCP(tcp)) }
        guard !listen.isEmpty else { throw ValidationError("give --socket PATH and/or --tcp HOST:PORT") }
        var logger = Logger(label: "platform-sim")
        logger.logLevel = .info
        var media = mediaRTMP
        var callbackAddress = callbacks
        if nginx && callbackAddress == nil { callbackAddress = "127.0.0.1:0" }
        let platform = SimPlatform(name: name, delayMs: delayMs, failing: fail, keyTTLMs: keyTTLSeconds * 1000, stateFile: stateFile)
        var hooks: MediaHooks?
        if let callbackAddress {
            guard case .tcp(let host, let port) = try Endpoint.parseTCP(callbackAddress) else { throw ValidationError("--callbacks HOST:PORT") }
            hooks = try await MediaHooks.start(host: host, port: port, platform: platform, logger: logger)
        }
        var mediaServer: NginxRTMP?
        if nginx, let hooks {
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lr-sim-\(name)-\(UUID().uuidString.prefix(6))")
            let n = try NginxRTMP(directory: dir, callbacks: "http://\(hooks.address)")
            mediaServer = n
            media = n.url
        }
        defer { mediaServer?.stop() }
        await platform.setMedia(media, liveHTTPFLV: liveHTTPFLV)
        await platform.writeState()
        var registry = ServiceRegistry()
        platform.register(in: &registry)
        var configuration = ServerConfiguration(listen: listen)
        configuration.gracePeriod = .seconds(2)
        if let token {
            configuration.authenticate = { ctx in
                ctx.metadata["authorization"] == "Bearer \(token)" ? .trusted
                    : .refused(RPCStatus(.unauthenticated, "platform \(name) needs its connector token"))
            }
        }
        let server = RPCServer(configuration: configuration, registry: registry, logger: logger)
        let bound = try await server.start()
        logger.info("platform-sim ready", metadata: ["name": "\(name)", "endpoints": "\(bound.map(\.description).joined(separator: " "))",
                                                     "media": "\(media ?? "none")", "callbacks": "\(hooks?.address ?? "none")"])
        var reporter: Task<Void, Never>?
        if let reportTo {
            let endpoint: Endpoint = reportTo.hasPrefix("unix:") ? .unix(path: String(reportTo.dropFirst(5))) : try Endpoint.parseTCP(reportTo)
            let reporterLogger = logger
            reporter = Task {
                await AudienceReporter(platform: platform, endpoint: endpoint, token: token ?? "", intervalMs: reportIntervalMs,
                                       reconnectEvery: reconnectEvery, logger: reporterLogger).run()
            }
        }
        let group = ServiceGroup(configuration: .init(services: [.init(service: server)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        reporter?.cancel()
        hooks?.stop()
    }
}

/// The simulated platform's rooms.
actor SimPlatform {
    struct SimRoom: Codable {
        var id: String
        var requestId: String
        var title: String
        var key: String
        var keyExpiresAtMs: Int64
        var status: Int32
        var closed: Bool
        var liveroomRoomId: String = ""
        /// The media server says a publisher is on this room's key.
        var live: Bool = false
    }

    let name: String
    let delayMs: Int64
    let failing: Bool
    let keyTTLMs: Int64
    let stateFile: String?
    private var rooms: [String: SimRoom] = [:]
    private var byRequest: [String: String] = [:]
    private var cancelledRequests: Set<String> = []
    private var counter = 0
    /// The media server's rtmp://HOST:PORT/APP, if the platform has one.
    private(set) var media: String?

    /// Every open room is live with this HTTP-FLV pull URL.
    private(set) var liveHTTPFLV: String?

    func setMedia(_ url: String?, liveHTTPFLV: String?) {
        media = url
        self.liveHTTPFLV = liveHTTPFLV
    }

    /// nginx-rtmp's on_publish: may this key publish? A yes makes its room live.
    func onPublish(key: String) -> Bool {
        guard var room = rooms.values.first(where: { $0.key == key && !$0.closed }) else { return false }
        room.live = true
        room.status = RoomStatus.live.rawValue
        rooms[room.id] = room
        writeState()
        return true
    }

    /// nginx-rtmp's on_done: the publisher of this key left.
    func onDone(key: String) {
        guard var room = rooms.values.first(where: { $0.key == key }) else { return }
        room.live = false
        if !room.closed { room.status = RoomStatus.notStarted.rawValue }
        rooms[room.id] = room
        writeState()
    }

    init(name: String, delayMs: Int64, failing: Bool, keyTTLMs: Int64, stateFile: String?) {
        self.name = name
        self.delayMs = delayMs
        self.failing = failing
        self.keyTTLMs = keyTTLMs
        self.stateFile = stateFile
    }

    nonisolated func register(in registry: inout ServiceRegistry) {
        registry.unary(PlatformConnector.createPlatformRoom) { r, _ in try await self.create(r) }
        registry.unary(PlatformConnector.rotatePlatformKey) { r, _ in try await self.rotate(r) }
        registry.unary(PlatformConnector.getPlatformRoomStatus) { r, _ in try await self.status(r) }
        registry.unary(PlatformConnector.closePlatformRoom) { r, _ in try await self.close(r) }
    }

    private var nowMs: Int64 { SystemWallClock().nowMs() }

    private func behave() async throws {
        if delayMs > 0 { try await Task.sleep(for: .milliseconds(delayMs)) }
        if failing { throw RPCStatus(.unavailable, "\(name) is having an outage (simulated)") }
    }

    func create(_ r: CreatePlatformRoomRequest) async throws -> CreatePlatformRoomResponse {
        try await behave()
        guard !cancelledRequests.contains(r.requestId) else {
            throw RPCStatus(.aborted, "request \(r.requestId) was cancelled before it finished")
        }
        guard !r.title.isEmpty else { throw RPCStatus(.invalidArgument, "\(name) needs a title") }
        let room: SimRoom
        if let id = byRequest[r.requestId], let existing = rooms[id] {
            room = existing
        } else {
            counter += 1
            let id = "\(name)-\(counter)-\(StreamKey.identifier(prefix: "", bytes: 3))"
            room = SimRoom(id: id, requestId: r.requestId, title: r.title, key: "\(name)_" + StreamKey.generate(),
                           keyExpiresAtMs: nowMs + keyTTLMs, status: RoomStatus.notStarted.rawValue, closed: false,
                           liveroomRoomId: r.roomId)
            rooms[id] = room
            if !r.requestId.isEmpty { byRequest[r.requestId] = id }
            writeState()
        }
        var out = CreatePlatformRoomResponse()
        out.platformRoomId = room.id
        out.pushServer = media ?? "rtmp://push.\(name).example/live"
        out.streamKey = room.key
        out.keyExpiresAtMs = room.keyExpiresAtMs
        out.playUrl = "https://\(name).example/live/\(room.id)"
        out.status = RoomStatus(rawValue: room.status)
        return out
    }

    private func existing(_ id: String) throws -> SimRoom {
        guard let room = rooms[id] else { throw RPCStatus(.notFound, "\(name) has no room \(id)") }
        return room
    }

    func rotate(_ r: RotatePlatformKeyRequest) async throws -> RotatePlatformKeyResponse {
        try await behave()
        var room = try existing(r.platformRoomId)
        guard !room.closed else { throw RPCStatus(.failedPrecondition, "room \(room.id) is closed on \(name)") }
        room.key = "\(name)_" + StreamKey.generate()
        room.keyExpiresAtMs = nowMs + keyTTLMs
        rooms[room.id] = room
        writeState()
        var out = RotatePlatformKeyResponse()
        out.streamKey = room.key
        out.keyExpiresAtMs = room.keyExpiresAtMs
        return out
    }

    func status(_ r: GetPlatformRoomStatusRequest) async throws -> GetPlatformRoomStatusResponse {
        try await behave()
        let room = try existing(r.platformRoomId)
        var out = GetPlatformRoomStatusResponse()
        out.status = room.closed ? .ended : RoomStatus(rawValue: room.status)
        out.keyExpiresAtMs = room.keyExpiresAtMs
        if let media, room.live && !room.closed { out.pullUrl = "\(media)/\(room.key)" }
        if let liveHTTPFLV, !room.closed {
            out.status = .live
            out.pullUrl = liveHTTPFLV
        }
        return out
    }

    func close(_ r: ClosePlatformRoomRequest) async throws -> ClosePlatformRoomResponse {
        try await behave()
        var id = r.platformRoomId
        if id.isEmpty {
            // Undo of a create that failed on the daemon's side: close it if it exists, and
            // make a create still in progress fail.
            cancelledRequests.insert(r.requestId)
            guard let made = byRequest[r.requestId] else { return ClosePlatformRoomResponse() }
            id = made
        }
        var room = try existing(id)
        room.closed = true
        room.status = RoomStatus.ended.rawValue
        rooms[id] = room
        writeState()
        return ClosePlatformRoomResponse()
    }

    /// Our rooms that are open, by the daemon's room id.
    func openLiveroomRooms() -> [String] {
        rooms.values.filter { !$0.closed && !$0.liveroomRoomId.isEmpty }.map(\.liveroomRoomId).sorted()
    }

    /// Lets tests and demos see the platform's side.
    func writeState() {
        guard let stateFile else { return }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        if let data = try? encoder.encode(rooms.values.sorted { $0.id < $1.id }) {
            try? data.write(to: URL(fileURLWithPath: stateFile), options: .atomic)
        }
    }
}

/// Streams the platform's audience for its rooms to the daemon, as a connector does: every report
/// is kept until acknowledged and resent, with its sequence number, after a reconnect.
struct AudienceReporter {
    let platform: SimPlatform
    let endpoint: Endpoint
    let token: String
    let intervalMs: Int64
    let reconnectEvery: Int
    let logger: Logger

    func run() async {
        let connectorId = "sim-\(platform.name)"
        var sequence: UInt64 = 0
        var unacked: [UInt64: AudienceReport] = [:]
        var online: [String: Int64] = [:]
        while !Task.isCancelled {
            do {
                var configuration = ClientConfiguration()
                configuration.defaultMetadata.add("authorization", "Bearer \(token)")
                let client = try await RPCClient.connect(to: endpoint, configuration: configuration)
                defer { Task { await client.close() } }
                let call = try await client.streaming(AudienceService.reportAudience)
                let acks = Task {
                    var done: [UInt64] = []
                    do { for try await ack in call.responses { done.append(ack.sequence) } } catch {}
                    return done
                }
                // Resend what the last connection did not get acknowledged, in order.
                for seq in unacked.keys.sorted() { try await call.send(unacked[seq]!) }
                var sentOnThisStream = 0
                while !Task.isCancelled && (reconnectEvery == 0 || sentOnThisStream < reconnectEvery) {
                    for room in await platform.openLiveroomRooms() {
                        sequence += 1
                        var r = AudienceReport()
                        r.connectorId = connectorId
                        r.sequence = sequence
                        r.roomId = room
                        r.reportedAtMs = SystemWallClock().nowMs()
                        let current = max(0, (online[room] ?? 50) + Int64.random(in: -10...15))
                        online[room] = current
                        r.viewersOnline = current
                        r.newViewers = Int64.random(in: 0...8)
                        r.comments = Int64.random(in: 0...12)
                        r.likes = Int64.random(in: 0...40)
                        r.interactions = Int64.random(in: 0...6)
                        r.gifts = Int64.random(in: 0...2)
                        r.itemsSold = Int64.random(in: 0...3)
                        var sales = Money()
                        sales.minorUnits = r.itemsSold * 1990
                        sales.currency = "CNY"
                        r.sales = sales
                        unacked[sequence] = r
                        try await call.send(r)
                        sentOnThisStream += 1
                    }
                    try await Task.sleep(for: .milliseconds(intervalMs))
                }
                call.halfClose()
                for seq in await acks.value { unacked[seq] = nil }
                if reconnectEvery > 0 { logger.info("reconnecting the report stream", metadata: ["unacked": "\(unacked.count)"]) }
            } catch {
                logger.info("report stream to \(endpoint) failed; retrying", metadata: ["error": "\(error)", "unacked": "\(unacked.count)"])
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }
}
