// The stateful target: a whole daemon in this process (real listeners, store, rooms), driven by
// each input as a program of frames on a Unix or TCP connection: calls of every method,
// requests with extreme values, media, cancels, credit, pings, and peers that stop reading.
// After each input another connection must get a Health answer within 5 s: a crash anywhere in
// the daemon ends the run (libFuzzer reports it), a hang is turned into one.
import Foundation
import LiveRoomDomain
import LiveRoomMessages
import LiveRoomRPC
import LiveRoomService
import LiveRoomStore
import Logging
import NIOCore
import Synchronization

/// The daemon and what the programs address, made once per fuzzing process.
final class FuzzedDaemon: Sendable {
    static let shared = FuzzedDaemon()

    let socket: String
    let tcpPort: Int
    let roomId = "rm_fuzz_room"
    let streamKey = "sk_fuzz_key_0123456789"
    let connectorToken = "fuzz-connector-token-0123"
    let tcpToken = "fuzz-tcp-token-0123456789"

    private init() {
        let dir = NSTemporaryDirectory() + "liveroom-fuzz-\(getpid())"
        try? FileManager.default.removeItem(atPath: dir)
        try! FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        socket = dir + "/d.sock"
        // A room on an external platform, so that its connector's audience reports are taken.
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let record = RoomRecord(id: roomId, requestId: "fuzz", title: "Fuzz", kind: .live, platformId: "fz", playMode: .embedded,
                                ownerId: "", pushServer: "rtmp://127.0.0.1/live", streamKey: streamKey, keyExpiresAtMs: now + 86_400_000,
                                playURL: "", platformRoomId: "p-fuzz", status: .notStarted, createdAtMs: now, updatedAtMs: now)
        let seeded = DispatchSemaphore(value: 0)
        Task {
            let store = try! SQLiteStore(directory: dir + "/data")
            try! await store.insert(record)
            seeded.signal()
        }
        seeded.wait()

        var configuration = DaemonConfiguration()
        configuration.socketPath = socket
        configuration.dataDir = dir + "/data"
        configuration.tcp = "127.0.0.1:0"
        configuration.tcpToken = tcpToken
        configuration.rtmp = nil
        configuration.http = nil
        configuration.enableTestService = true
        configuration.maxFrameSize = 64 * 1024
        configuration.logLevel = .critical
        var fz = PlatformSettings(id: "fz", displayName: "Fuzz")
        fz.connector = "unix:\(dir)/no-connector.sock"
        fz.token = connectorToken
        fz.timeoutMs = 200
        configuration.platforms = [fz]
        var logger = Logger(label: "liveroomd-fuzz")
        logger.logLevel = .critical
        let daemon = try! Daemon(configuration: configuration, logger: logger)
        let started = DispatchSemaphore(value: 0)
        let port = Mutex(0)
        Task {
            let endpoints = try! await daemon.start()
            for case .tcp(_, let p) in endpoints { port.withLock { $0 = p } }
            started.signal()
            try? await daemon.run()
        }
        started.wait()
        tcpPort = port.withLock { $0 }
    }
}

/// Runs one program against the daemon, then checks it still answers.
func fuzzDaemon(_ bytes: UnsafeBufferPointer<UInt8>) {
    let daemon = FuzzedDaemon.shared
    var program = Program(bytes: Array(bytes))
    let flags = program.byte()
    let overTCP = flags & 1 != 0
    guard let connection = RawSocket(unix: overTCP ? nil : daemon.socket, tcpPort: overTCP ? daemon.tcpPort : nil) else {
        fatalError("cannot connect to the fuzzed daemon")
    }
    var writer = FrameWriter(withToken: !overTCP || flags & 2 != 0, daemon: daemon)
    connection.send(Frame.preface)
    var reading = true
    while let op = program.next() {
        if reading { connection.drain() }
        switch op % 14 {
        case 0: connection.send(program.take(Int(program.byte())))  // raw bytes
        case 1: connection.send(writer.headers(method: Int(program.byte()), timeout: program.byte(), end: program.byte() & 1 == 1))
        case 2: connection.send(writer.message(program: &program, end: program.byte() & 1 == 1))
        case 3: connection.send(writer.frame(.end, call: writer.callId(program.byte())))
        case 4: connection.send(writer.frame(.cancel, call: writer.callId(program.byte())))
        case 5:
            var credit = ByteBuffer()
            credit.writeInteger(program.u32())
            connection.send(writer.frame(.windowUpdate, call: writer.callId(program.byte()), payload: credit))
        case 6: connection.send(writer.frame(.ping, call: 0, payload: ByteBuffer(bytes: program.take(8))))
        case 7: reading = false  // a peer that never reads again
        case 8: for _ in 0..<Int(program.byte() % 64) { connection.send(writer.frame(.ping, call: 0, payload: ByteBuffer(bytes: [1, 2, 3, 4, 5, 6, 7, 8]))) }
        case 9: connection.send(writer.headers(method: Int(program.byte()), timeout: 0, end: false, bogusId: program.u32()))
        case 10: usleep(UInt32(program.byte()) * 100)
        case 12:
            // A whole report stream: the way real connectors talk, so that reports with edge
            // values are counted and summed often.
            let batched = program.byte() & 1 == 1
            connection.send(writer.headers(method: FrameWriter.index(of: batched ? AudienceService.reportAudienceBatch.info
                                                                    : AudienceService.reportAudience.info), timeout: 0, end: false))
            for _ in 0..<(1 + Int(program.byte() % 8)) {
                connection.send(writer.message(program: &program, end: false, call: writer.open.count - 1))
            }
            connection.send(writer.frame(.end, call: writer.open.last!.id))
        case 13:
            connection.send(writer.headers(method: FrameWriter.index(of: AudienceService.getRoomStats.info), timeout: 0, end: false))
            connection.send(writer.message(program: &program, end: true, call: writer.open.count - 1))
        default: connection.send(writer.message(program: &program, end: false, attachment: program.take(Int(program.byte()))))
        }
    }
    if reading { connection.drain() }
    connection.close()
    if let problem = healthProblem(daemon.socket) {
        fatalError("after this input: \(problem)")
    }
}

/// The input, read as operations and their operands (zeros once it runs out).
struct Program {
    let bytes: [UInt8]
    var at = 0

    mutating func next() -> UInt8? {
        guard at < bytes.count else { return nil }
        return byte()
    }

    mutating func byte() -> UInt8 {
        guard at < bytes.count else { return 0 }
        defer { at += 1 }
        return bytes[at]
    }

    mutating func u32() -> UInt32 { (0..<4).reduce(0) { v, _ in v << 8 | UInt32(byte()) } }

    mutating func take(_ n: Int) -> [UInt8] {
        let end = min(bytes.count, at + n)
        defer { at = end }
        return Array(bytes[at..<end])
    }

    /// A value at or near the edges of its type, or an ordinary one.
    mutating func extreme() -> Int64 {
        let edges: [Int64] = [0, 1, -1, .max, .min, .max - 1, 1_000_000_000_000, 1_000_000_000_001, Int64(Int32.max) + 1, 42]
        return edges[Int(byte()) % edges.count]
    }
}

/// Builds frames for calls this program opens.
struct FrameWriter {
    let withToken: Bool
    let daemon: FuzzedDaemon
    var nextCall: UInt32 = 1
    var open: [(id: UInt32, method: MethodInfo)] = []
    /// Sequences go on across inputs, as a connector's do across connections: a fresh
    /// sequence is new to the daemon, so reports keep being counted run after run.
    static let sequence = Atomic<UInt64>(1)

    init(withToken: Bool, daemon: FuzzedDaemon) {
        self.withToken = withToken
        self.daemon = daemon
    }

    static let methods = AllServices.methods.filter { !$0.service.hasSuffix("PlatformConnector") }
    static func index(of method: MethodInfo) -> Int { methods.firstIndex(of: method)! }

    func callId(_ pick: UInt8) -> UInt32 {
        open.isEmpty ? UInt32(pick) : open[Int(pick) % open.count].id
    }

    func frame(_ type: FrameType, flags: FrameFlags = [], call: UInt32, payload: ByteBuffer = ByteBuffer()) -> [UInt8] {
        var b = ByteBuffer()
        b.writeInteger(UInt32(6 + payload.readableBytes))  // the length counts type, flags and call id
        b.writeInteger(type.rawValue)
        b.writeInteger(flags.rawValue)
        b.writeInteger(call)
        var p = payload
        b.writeBuffer(&p)
        return Array(b.readableBytesView)
    }

    mutating func headers(method pick: Int, timeout: UInt8, end: Bool, bogusId: UInt32? = nil) -> [UInt8] {
        let method = Self.methods[pick % Self.methods.count]
        var header = CallHeader()
        header.method = method.path
        header.timeoutMs = Int64(timeout) * 10
        var metadata: [MetadataEntry] = []
        func add(_ k: String, _ v: String) { var e = MetadataEntry(); e.key = k; e.value = v; metadata.append(e) }
        if method.name.hasPrefix("ReportAudience") { add("authorization", "Bearer \(daemon.connectorToken)") }
        else if withToken { add("authorization", "Bearer \(daemon.tcpToken)") }
        header.metadata = metadata
        let id = bogusId ?? nextCall
        if bogusId == nil {
            nextCall += 1
            open.append((id, method))
        }
        let payload = (try? header.serializedBytes()) ?? []
        return frame(.headers, flags: end ? .endStream : [], call: id, payload: ByteBuffer(bytes: payload))
    }

    /// A request for an open call: the right type for its method, addressed to the seeded room,
    /// with values picked from the edges of their types.
    mutating func message(program p: inout Program, end: Bool, attachment: [UInt8]? = nil, call: Int? = nil) -> [UInt8] {
        guard !open.isEmpty else { return [] }
        let (id, method) = open[call ?? Int(p.byte()) % open.count]
        var body = ByteBuffer()
        let room = p.byte() % 8 == 0 ? "rm_missing" : daemon.roomId
        switch method.inputType {
        case AudienceReport.protoDescriptor.fullName:
            try? report(&p, room).serialize(into: &body)
        case AudienceReportBatch.protoDescriptor.fullName:
            var batch = AudienceReportBatch()
            for _ in 0..<(1 + Int(p.byte() % 4)) { batch.reports.append(report(&p, room)) }
            try? batch.serialize(into: &body)
        case GetRoomStatsRequest.protoDescriptor.fullName:
            var r = GetRoomStatsRequest()
            r.roomId = room
            try? r.serialize(into: &body)
        case ListViewersRequest.protoDescriptor.fullName:
            var r = ListViewersRequest()
            r.roomId = room
            r.pageSize = Int32(truncatingIfNeeded: p.extreme())
            r.pageToken = p.byte() % 2 == 0 ? "" : "\(p.extreme())"
            try? r.serialize(into: &body)
        case WatchRequest.protoDescriptor.fullName:
            var r = WatchRequest()
            r.roomId = room
            r.viewerId = "v\(p.byte() % 4)"
            r.name = String(repeating: "n", count: Int(p.byte()))
            try? r.serialize(into: &body)
        case StreamDataRequest.protoDescriptor.fullName:
            var r = StreamDataRequest()
            if p.byte() % 3 == 0 {
                var start = PublishStart()
                start.roomId = room
                start.streamKey = daemon.streamKey
                r.message = .start(start)
            } else {
                var c = MediaChunk()
                c.sequence = UInt64(bitPattern: p.extreme())
                c.timestampMs = p.extreme()
                c.keyframe = p.byte() & 1 == 1
                c.header = p.byte() & 1 == 1
                if attachment == nil { c.payload = ByteBuffer(bytes: p.take(Int(p.byte()))) }
                r.message = .chunk(c)
            }
            try? r.serialize(into: &body)
        case GetRoomRequest.protoDescriptor.fullName:
            var r = GetRoomRequest()
            r.roomId = room
            try? r.serialize(into: &body)
        default:
            body.writeBytes(p.take(Int(p.byte())))
        }
        var flags: FrameFlags = end ? .endStream : []
        if let attachment {
            flags.insert(.attachment)
            var payload = ByteBuffer()
            payload.writeInteger(UInt32(body.readableBytes))
            payload.writeBuffer(&body)
            payload.writeBytes(attachment)
            return frame(.message, flags: flags, call: id, payload: payload)
        }
        return frame(.message, flags: flags, call: id, payload: body)
    }

    private mutating func report(_ p: inout Program, _ room: String) -> AudienceReport {
        var r = AudienceReport()
        r.connectorId = "c\(p.byte() % 3)"
        // Mostly fresh sequences, sometimes repeats and values at the edges.
        switch p.byte() % 8 {
        case 0: r.sequence = UInt64(bitPattern: p.extreme())
        case 1: r.sequence = max(1, Self.sequence.load(ordering: .relaxed) - 1)  // a resend
        default: r.sequence = Self.sequence.wrappingAdd(1, ordering: .relaxed).oldValue
        }
        r.roomId = room
        // Ordinary counts, with one field (or, now and then, every field) at an edge: reports
        // must mostly be accepted for totals to build up across runs.
        var counts = (0..<9).map { _ in Int64(p.byte() % 10) }
        let pick = p.byte()
        if pick == 255 {
            counts = counts.map { _ in p.extreme() }
        } else {
            counts[Int(pick) % counts.count] = p.extreme()
        }
        r.reportedAtMs = p.byte() % 4 == 0 ? p.extreme() : 0
        (r.viewersOnline, r.newViewers, r.comments, r.likes) = (counts[0], counts[1], counts[2], counts[3])
        (r.interactions, r.gifts, r.itemsSold) = (counts[4], counts[5], counts[6])
        if counts[7] % 2 == 0 {
            var m = Money()
            m.minorUnits = counts[8]
            m.currency = ["CNY", "USD", "", "cny"][Int(p.byte()) % 4]
            r.sales = m
        }
        return r
    }
}

/// A blocking socket with short timeouts: the fuzzer must never wait on the daemon for long.
final class RawSocket {
    private var fd: Int32

    init?(unix path: String?, tcpPort: Int?) {
        if let path {
            fd = Foundation.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { raw in
                for (i, b) in path.utf8.prefix(raw.count - 1).enumerated() { raw[i] = b }
            }
            let ok = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            guard ok == 0 else { Foundation.close(fd); return nil }
        } else {
            fd = Foundation.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(tcpPort ?? 0).bigEndian)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let ok = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard ok == 0 else { Foundation.close(fd); return nil }
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    }

    /// Sends what the peer takes within 100 ms; the rest is dropped (the daemon may rightly
    /// stop reading from a peer that does not read).
    func send(_ bytes: [UInt8]) {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Foundation.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n > 0 { sent += n; continue }
            guard n < 0, errno == EAGAIN, wait(Int16(POLLOUT), ms: 100) else { return }
        }
    }

    /// Reads and discards what has arrived.
    func drain() {
        var scratch = [UInt8](repeating: 0, count: 65536)
        while scratch.withUnsafeMutableBytes({ recv(fd, $0.baseAddress, $0.count, 0) }) > 0 {}
    }

    func read(into buffer: inout [UInt8], ms: Int32) -> Bool {
        guard wait(Int16(POLLIN), ms: ms) else { return false }
        var scratch = [UInt8](repeating: 0, count: 65536)
        let n = scratch.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { return false }
        buffer += scratch[0..<n]
        return true
    }

    private func wait(_ events: Int16, ms: Int32) -> Bool {
        var p = pollfd(fd: fd, events: events, revents: 0)
        return poll(&p, 1, ms) > 0
    }

    func close() {
        Foundation.close(fd)
        fd = -1
    }
}

/// A Health/Check and the seeded room's GetRoomStats (which sums every report counted so far)
/// on a fresh connection both get their STATUS within 5 s.
func healthProblem(_ socket: String) -> String? {
    guard let c = RawSocket(unix: socket, tcpPort: nil) else { return "cannot connect to the daemon" }
    defer { c.close() }
    var header = CallHeader()
    header.method = Health.check.info.path
    var statsHeader = CallHeader()
    statsHeader.method = AudienceService.getRoomStats.info.path
    var stats = GetRoomStatsRequest()
    stats.roomId = FuzzedDaemon.shared.roomId
    let writer = FrameWriter(withToken: false, daemon: FuzzedDaemon.shared)
    c.send(Frame.preface + writer.frame(.headers, call: 1, payload: ByteBuffer(bytes: (try? header.serializedBytes()) ?? []))
        + writer.frame(.message, flags: .endStream, call: 1)
        + writer.frame(.headers, call: 2, payload: ByteBuffer(bytes: (try? statsHeader.serializedBytes()) ?? []))
        + writer.frame(.message, flags: .endStream, call: 2, payload: ByteBuffer(bytes: (try? stats.serializedBytes()) ?? [])))
    var received: [UInt8] = []
    let deadline = Date().addingTimeInterval(5)
    while Date() < deadline {
        // Two STATUS frames: type 4 at offset 4 of a frame header.
        var at = 0
        var statuses = 0
        while at + 10 <= received.count {
            let length = Int(received[at]) << 24 | Int(received[at + 1]) << 16 | Int(received[at + 2]) << 8 | Int(received[at + 3])
            if received[at + 4] == FrameType.status.rawValue { statuses += 1 }
            at += 4 + length
        }
        if statuses >= 2 { return nil }
        _ = c.read(into: &received, ms: 100)
    }
    return "Health and GetRoomStats were not both answered within 5 s (\(received.count) bytes received: \(received.prefix(64)))"
}
