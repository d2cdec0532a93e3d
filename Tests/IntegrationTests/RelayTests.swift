import Foundation
import LiveRoomClient
import LiveRoomMessages
import LiveRoomRPC
import LiveRoomTesting
import NIOConcurrencyHelpers
import NIOCore
import XCTest

/// Going live once, everywhere: a daemon relaying to two simulated platforms whose media
/// servers are real nginx-rtmp processes, and mirroring a platform's live into our room.
final class RelayTests: XCTestCase {
    var dir: URL!

    /// A simulated platform with its own nginx-rtmp, which asks the platform (on_publish) which keys may publish.
    struct Platform {
        let sim: PlatformSimProcess
        let nginx: NginxRTMP
    }

    override func setUp() async throws {
        try XCTSkipUnless(NginxRTMP.isAvailable, "nginx with the RTMP module is not installed (tools/test installs it)")
        for tool in ["ffmpeg", "ffprobe"] where Tool.find(tool) == nil { throw XCTSkip("\(tool) is not installed") }
        dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("relay-\(UUID().uuidString.prefix(8))")
    }

    func platform(_ name: String) async throws -> Platform {
        let callbacks = try NginxRTMP.freePort()
        let nginx = try NginxRTMP(directory: dir.appendingPathComponent("nginx-\(name)"), callbacks: "http://127.0.0.1:\(callbacks)")
        let sim = try await PlatformSimProcess(name: name, directory: dir, extra: ["--media-rtmp", nginx.url, "--callbacks", "127.0.0.1:\(callbacks)"])
        return Platform(sim: sim, nginx: nginx)
    }

    func daemon(_ platforms: [Platform]) async throws -> DaemonProcess {
        try await daemon(sims: platforms.map(\.sim))
    }

    /// A daemon configured with these platforms, polling and retrying quickly.
    func daemon(sims: [PlatformSimProcess]) async throws -> DaemonProcess {
        let config = dir.appendingPathComponent("d.conf")
        let settings = "mirror_poll_ms = 300\nrelay_retry_max_ms = 2000\n"
        try (settings + sims.map { $0.configSection() }.joined()).write(to: config, atomically: true, encoding: .utf8)
        return try await DaemonProcess(arguments: ["--config", config.path], directory: dir)
    }

    /// CreateRoom of a live room.
    func create(_ client: RPCClient, on platform: String, title: String = "t", ingest: Ingest = .unspecified,
                simulcast: [String] = []) async throws -> CreateRoomResponse {
        var create = CreateRoomRequest()
        create.title = title
        create.kind = .live
        create.platformId = platform
        create.ingest = ingest
        create.simulcastPlatformIds = simulcast
        return try await client.unary(RoomService.createRoom, create)
    }

    func destinations(_ client: RPCClient, _ room: String) async throws -> [Destination] {
        var r = ListDestinationsRequest()
        r.roomId = room
        return try await client.unary(RoomService.listDestinations, r).destinations
    }

    /// Polls until `check` holds (a condition of the system, not a timing assumption).
    func eventually(_ what: String, timeout: Duration = .seconds(30), _ check: () async throws -> Bool) async throws {
        let start = ContinuousClock.now
        while ContinuousClock.now - start < timeout {
            if try await check() { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        XCTFail("timed out waiting until \(what)")
        throw CancellationError()
    }

    /// Records `seconds` of a live RTMP stream to a file and probes it.
    func record(_ url: String, seconds: Int) async throws -> Tool.Probe {
        let file = dir.appendingPathComponent("rec-\(UUID().uuidString.prefix(6)).flv").path
        let r = try await Tool.run("ffmpeg", ["-nostdin", "-v", "error", "-i", url, "-t", "\(seconds)", "-c", "copy", "-f", "flv", file], timeout: 30)
        XCTAssertEqual(r.status, 0, "ffmpeg read \(url): \(r.stderr)")
        return try await Tool.probe(file)
    }

    func platformKey(_ p: Platform, _ room: Room) throws -> String {
        try XCTUnwrap(try p.sim.rooms().first { $0.id == room.platformRoomId }?.key)
    }

    func testSimulcastToTwoPlatformsSurvivesOneDyingAndRefusesAWrongKey() async throws {
        let (alpha, beta) = (try await platform("alpha"), try await platform("beta"))
        defer { alpha.nginx.stop(); beta.nginx.stop() }
        let d = try await daemon([alpha, beta])
        defer { Task { try? await d.stop() } }
        let client = try await d.connect(.unix)
        var create = CreateRoomRequest()
        create.title = "Launch"
        create.kind = .live
        create.platformId = "self"
        create.simulcastPlatformIds = ["alpha", "beta"]
        let made = try await client.unary(RoomService.createRoom, create)
        let room = try XCTUnwrap(made.room)
        XCTAssertEqual(made.linkedRooms.map(\.platformId), ["alpha", "beta"])
        XCTAssertEqual(made.linkedRooms.map(\.ingest), [.relay, .relay])
        // A retried create links nothing twice.
        create.requestId = room.requestId
        let again = try await client.unary(RoomService.createRoom, create)
        XCTAssertEqual(again.linkedRooms.map(\.roomId), made.linkedRooms.map(\.roomId))
        let linkedTargets = try await destinations(client, room.roomId).map(\.targetRoomId)
        XCTAssertEqual(linkedTargets, made.linkedRooms.map(\.roomId))

        // A plain RTMP destination with a key the platform does not know: nginx refuses it.
        var wrong = AddDestinationRequest()
        wrong.roomId = room.roomId
        wrong.url = alpha.nginx.url
        wrong.streamKey = "not-a-key-of-alpha"
        let added = try await client.unary(RoomService.addDestination, wrong)
        let bad = try XCTUnwrap(added.destination)
        XCTAssertEqual(bad.streamKeyHint, "…lpha", "the key is never shown in full")

        let publisher = Task {
            try await Tool.run("ffmpeg", RTMPTests.ffmpegArguments(to: "\(room.pushServer)/\(room.streamKey)", seconds: 40, realtime: true), timeout: 60)
        }
        defer { publisher.cancel() }
        // Our own viewer.
        var watch = WatchRequest()
        watch.roomId = room.roomId
        watch.viewerId = "v1"
        let viewerBytes = NIOLockedValueBox(0)
        let watched = NIOLockedValueBox(ByteBuffer())
        let viewer = Task {
            let call = try await client.serverStreaming(MediaService.watch, watch)
            for try await m in call.responses {
                if case .chunk(var c)? = m.message {
                    viewerBytes.withLockedValue { $0 += c.payload.readableBytes }
                    watched.withLockedValue { _ = $0.writeBuffer(&c.payload) }
                }
            }
        }
        defer { viewer.cancel() }

        try await eventually("both platforms are live") {
            try await destinations(client, room.roomId).filter { !$0.targetRoomId.isEmpty }.allSatisfy { $0.state == .live }
        }
        try await eventually("the wrong key is refused") {
            try await destinations(client, room.roomId).first { $0.destinationId == bad.destinationId }?.state == .failed
        }
        let refused = try await destinations(client, room.roomId).first { $0.destinationId == bad.destinationId }!
        XCTAssertTrue(refused.lastError.contains("refused"), refused.lastError)

        // Each platform's own server has our stream: H.264 and AAC, as long as we read it.
        for (p, linked) in zip([alpha, beta], made.linkedRooms) {
            let probe = try await record("\(p.nginx.url)/\(try platformKey(p, linked))", seconds: 2)
            XCTAssertEqual(probe.streams, ["audio:aac", "video:h264"])
            XCTAssertGreaterThan(probe.duration, 1.5)
        }

        // Our own viewer gets the same stream.
        let ours = dir.appendingPathComponent("ours.flv")
        try Data(watched.withLockedValue { $0 }.readableBytesView).write(to: ours)
        let probeOurs = try await Tool.probe(ours.path)
        XCTAssertEqual(probeOurs.streams, ["audio:aac", "video:h264"])
        XCTAssertGreaterThan(probeOurs.duration, 1.5)

        // alpha's media server dies: beta and our viewer carry on.
        alpha.nginx.kill()
        try await eventually("alpha's destination is retrying") {
            try await destinations(client, room.roomId).first { $0.targetRoomId == made.linkedRooms[0].roomId }?.state == .retrying
        }
        let betaBefore = try await destinations(client, room.roomId).first { $0.targetRoomId == made.linkedRooms[1].roomId }!.bytesSent
        let viewerBefore = viewerBytes.withLockedValue { $0 }
        try await Task.sleep(for: .seconds(2))
        let betaAfter = try await destinations(client, room.roomId).first { $0.targetRoomId == made.linkedRooms[1].roomId }!
        XCTAssertEqual(betaAfter.state, .live)
        XCTAssertGreaterThan(betaAfter.bytesSent, betaBefore)
        XCTAssertGreaterThan(viewerBytes.withLockedValue { $0 }, viewerBefore)

        // It comes back: the destination reconnects and the platform has the stream again.
        try alpha.nginx.start()
        try await eventually("alpha's destination is live again") {
            guard let a = try await destinations(client, room.roomId).first(where: { $0.targetRoomId == made.linkedRooms[0].roomId }) else { return false }
            return a.state == .live && a.reconnects >= 1
        }
        let back = try await record("\(alpha.nginx.url)/\(try platformKey(alpha, made.linkedRooms[0]))", seconds: 2)
        XCTAssertEqual(back.streams, ["audio:aac", "video:h264"])

        // The refused destination did not retry in a loop meanwhile.
        let stillRefused = try await destinations(client, room.roomId).first { $0.destinationId == bad.destinationId }!
        XCTAssertEqual(stillRefused.state, .failed)
        XCTAssertEqual(stillRefused.reconnects, 0)

        // GetRoom shows the destinations too.
        var get = GetRoomRequest()
        get.roomId = room.roomId
        let shown = try await client.unary(RoomService.getRoom, get)
        XCTAssertEqual(shown.room?.destinations.count, 3)
        var remove = RemoveDestinationRequest()
        remove.roomId = room.roomId
        remove.destinationId = bad.destinationId
        _ = try await client.unary(RoomService.removeDestination, remove)
        let left = try await destinations(client, room.roomId)
        XCTAssertEqual(left.count, 2)
    }

    func testBadDestinationsAreRefusedWithReasons() async throws {
        let alpha = try await platform("alpha")
        defer { alpha.nginx.stop() }
        let d = try await daemon([alpha])
        defer { Task { try? await d.stop() } }
        let client = try await d.connect(.unix)
        let made = try await create(client, on: "self")
        let room = try XCTUnwrap(made.room)
        func add(_ url: String, _ key: String, target: String = "") async -> RPCStatus? {
            var r = AddDestinationRequest()
            r.roomId = room.roomId
            r.url = url
            r.streamKey = key
            r.targetRoomId = target
            do { _ = try await client.unary(RoomService.addDestination, r); return nil } catch let s as RPCStatus { return s } catch { return nil }
        }
        for (url, key, says) in [("http://x/live", "k", "rtmp://"), ("rtmp://host", "k", "application path"), ("rtmp://h:0/live", "k", "port"),
                                 (alpha.nginx.url, "", "stream_key"), (alpha.nginx.url, "a b", "stream_key"),
                                 ("rtmp://127.0.0.1:\(d.rtmpPort)/live", "k", "loop")] {
            let s = await add(url, key)
            XCTAssertEqual(s?.code, .invalidArgument, url)
            XCTAssertTrue(s?.message.contains(says) == true, "\(url): \(s?.message ?? "")")
        }
        // Peers that are not RTMP servers: one answers garbage, one hangs up at once. Each
        // destination goes to retrying with the reason; the daemon carries on.
        let garbage = try NginxRTMP.freePort(), hangup = try NginxRTMP.freePort()
        let peers = Task {
            try await Tool.run("python3", ["-c", """
                import socket, threading, time
                def serve(port, answer):
                    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", port)); s.listen(16)
                    while True:
                        c, _ = s.accept(); c.recv(4096)
                        if answer: c.sendall(answer)
                        c.close()
                threading.Thread(target=serve, args=(\(garbage), b"HTTP/1.1 400 Bad Request\\r\\n\\r\\n" * 400), daemon=True).start()
                threading.Thread(target=serve, args=(\(hangup), b""), daemon=True).start()
                time.sleep(25)
                """], timeout: 30)
        }
        defer { peers.cancel() }
        try await Task.sleep(for: .milliseconds(300))
        let addedGarbage = await add("rtmp://127.0.0.1:\(garbage)/live", "k1")
        let addedHangup = await add("rtmp://127.0.0.1:\(hangup)/live", "k2")
        XCTAssertNil(addedGarbage)
        XCTAssertNil(addedHangup)
        let session = try await client.streaming(MediaService.streamData)
        var start = StreamDataRequest()
        var begin = PublishStart()
        begin.roomId = room.roomId
        begin.streamKey = room.streamKey
        start.message = .start(begin)
        try await session.send(start)
        var header = StreamDataRequest()
        var c = MediaChunk()
        c.header = true
        c.payload = ByteBuffer(bytes: [0x46, 0x4C, 0x56, 1, 5, 0, 0, 0, 9, 0, 0, 0, 0])
        header.message = .chunk(c)
        try await session.send(header)
        try await eventually("both peers put their destinations into retrying") {
            let list = try await destinations(client, room.roomId)
            return list.count == 2 && list.allSatisfy { $0.state == .retrying }
        }
        let reasons = try await destinations(client, room.roomId).map(\.lastError)
        XCTAssertTrue(reasons[0].contains("version 72"), reasons[0])  // "H" of HTTP where RTMP's 3 should be
        XCTAssertTrue(reasons[1].contains("handshake"), reasons[1])
        _ = try? await session.finish()
        for d in try await destinations(client, room.roomId) {
            var r = RemoveDestinationRequest()
            r.roomId = room.roomId
            r.destinationId = d.destinationId
            _ = try await client.unary(RoomService.removeDestination, r)
        }

        let selfTarget = await add("", "", target: room.roomId)
        XCTAssertEqual(selfTarget?.code, .invalidArgument)
        let missing = await add("", "", target: "rm_nope")
        XCTAssertEqual(missing?.code, .invalidArgument)
        let both = await add(alpha.nginx.url, "k", target: room.roomId)
        XCTAssertEqual(both?.code, .invalidArgument, "both kinds at once")
        // The daemon is fine.
        let none = try await destinations(client, room.roomId)
        XCTAssertEqual(none.count, 0)
    }

    func testDirectIngestIsMirroredIntoOurRoom() async throws {
        let alpha = try await platform("alpha")
        defer { alpha.nginx.stop() }
        let d = try await daemon([alpha])
        defer { Task { try? await d.stop() } }
        let client = try await d.connect(.unix)
        var create = CreateRoomRequest()
        create.title = "Straight to alpha"
        create.kind = .live
        create.platformId = "alpha"
        create.ingest = .direct
        create.playMode = .embedded
        let createdRoom = try await client.unary(RoomService.createRoom, create)
        let room = try XCTUnwrap(createdRoom.room)
        XCTAssertEqual(room.ingest, .direct)
        XCTAssertEqual(room.pushServer, alpha.nginx.url, "the broadcaster publishes to the platform")

        // Our own ingest refuses the platform's key: this room goes live on the platform.
        let ours = try await Tool.run("ffmpeg", RTMPTests.ffmpegArguments(to: "rtmp://127.0.0.1:\(d.rtmpPort)/live/\(room.streamKey)", seconds: 0.5))
        XCTAssertNotEqual(ours.status, 0)

        let publisher = Task {
            try await Tool.run("ffmpeg", RTMPTests.ffmpegArguments(to: "\(room.pushServer)/\(room.streamKey)", seconds: 30, realtime: true), timeout: 60)
        }
        defer { publisher.cancel() }
        var get = GetRoomRequest()
        get.roomId = room.roomId
        try await eventually("the mirror room is live") {
            try await client.unary(RoomService.getRoom, get).room?.status == .live
        }
        // liveroomctl watch gets FLV that ffprobe reads.
        let file = dir.appendingPathComponent("mirror.flv").path
        let watch = Task {
            try await Tool.run("bash", ["-c", "timeout 4 '\(DaemonProcess.binDirectory.path)/liveroomctl' watch \(room.roomId) --viewer v1 --socket '\(d.socketPath)' > '\(file)'"])
        }
        _ = try await watch.value
        let probe = try await Tool.probe(file)
        XCTAssertEqual(probe.streams, ["audio:aac", "video:h264"])
        XCTAssertGreaterThan(probe.duration, 1)
    }

    /// A platform that offers HTTP-FLV pulls: ffmpeg serves a live FLV over HTTP (a real server).
    func testDirectIngestIsMirroredOverHTTPFLV() async throws {
        let port = try NginxRTMP.freePort()
        let server = Task {
            try await Tool.run("ffmpeg", ["-nostdin", "-v", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
                                          "-f", "lavfi", "-i", "sine=frequency=440", "-t", "20", "-c:v", "libx264", "-preset", "ultrafast",
                                          "-g", "25", "-pix_fmt", "yuv420p", "-c:a", "aac", "-f", "flv", "-listen", "1",
                                          "http://127.0.0.1:\(port)/live.flv"], timeout: 40)
        }
        defer { server.cancel() }
        let sim = try await PlatformSimProcess(name: "gamma", directory: dir, extra: ["--live-http-flv", "http://127.0.0.1:\(port)/live.flv"])
        let d = try await daemon(sims: [sim])
        defer { Task { try? await d.stop() } }
        let client = try await d.connect(.unix)
        let made = try await create(client, on: "gamma", title: "HTTP-FLV", ingest: .direct)
        let room = try XCTUnwrap(made.room)
        var watch = WatchRequest()
        watch.roomId = room.roomId
        watch.viewerId = "v1"
        var got = ByteBuffer()
        let call = try await client.serverStreaming(MediaService.watch, watch)
        for try await m in call.responses {
            if case .chunk(var c)? = m.message { got.writeBuffer(&c.payload) }
            if got.readableBytes > 100_000 { break }
        }
        let file = dir.appendingPathComponent("http-mirror.flv")
        try Data(got.readableBytesView).write(to: file)
        let probe = try await Tool.probe(file.path)
        XCTAssertEqual(probe.streams, ["audio:aac", "video:h264"])
    }
}
