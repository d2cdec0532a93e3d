import Foundation
import LiveRoomClient
import LiveRoomMessages
import LiveRoomRPC
import LiveRoomTesting
import NIOCore
import XCTest

/// Rooms on the built-in platform and on simulated external platforms, through a real daemon.
final class RoomTests: XCTestCase {
    var dir: URL!
    var sims: [PlatformSimProcess] = []

    override func setUp() {
        dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("rooms-\(UUID().uuidString.prefix(8))")
    }

    override func tearDown() {
        for s in sims { s.stop() }
        sims = []
    }

    /// Starts simulators and a daemon configured with them (plus `extraConfig`).
    func start(sims names: [(String, [String])] = [("douyin", []), ("kuaishou", [])], timeoutMs: Int = 2000,
               extraConfig: String = "") async throws -> DaemonProcess {
        var config = extraConfig
        for (name, flags) in names {
            let sim = try await PlatformSimProcess(name: name, directory: dir, extra: flags)
            sims.append(sim)
            config += sim.configSection(timeoutMs: timeoutMs, supports: name == "kuaishou" ? "live" : "live,meeting")
        }
        let file = dir.appendingPathComponent("liveroomd.conf")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try config.write(to: file, atomically: true, encoding: .utf8)
        return try await DaemonProcess(arguments: ["--config", file.path], directory: dir)
    }

    func create(_ client: RPCClient, _ platform: String, title: String = "Launch", requestId: String = "", kind: RoomKind = .live) async throws -> CreateRoomResponse {
        var r = CreateRoomRequest()
        r.platformId = platform
        r.title = title
        r.requestId = requestId
        r.kind = kind
        return try await client.unary(RoomService.createRoom, r)
    }

    func get(_ client: RPCClient, _ id: String) async throws -> Room {
        var r = GetRoomRequest()
        r.roomId = id
        return try await client.unary(RoomService.getRoom, r).room ?? Room()
    }

    func expect(_ code: RPCStatus.Code, containing text: String = "", file: StaticString = #filePath, line: UInt = #line,
                _ body: () async throws -> Any) async {
        do {
            _ = try await body()
            XCTFail("expected \(code.name)", file: file, line: line)
        } catch let status as RPCStatus {
            XCTAssertEqual(status.code, code, status.message, file: file, line: line)
            XCTAssertTrue(text.isEmpty || status.message.contains(text), "\"\(status.message)\" should contain \"\(text)\"", file: file, line: line)
        } catch {
            XCTFail("unexpected \(error)", file: file, line: line)
        }
    }

    /// Publishes `chunks` chunks with `key`; returns the summary.
    func publish(_ client: RPCClient, room: String, key: String, chunks: Int = 2) async throws -> StreamDataResponse {
        let call = try await client.startPublishing(roomId: room, streamKey: key)
        for i in 0..<chunks {
            var c = MediaChunk()
            c.sequence = UInt64(i)
            c.payload = ByteBuffer(repeating: UInt8(i), count: 1000)
            var m = StreamDataRequest()
            m.message = .chunk(c)
            do { try await call.send(m) } catch { break }  // refused calls end early
        }
        return try await call.finish()
    }

    func testRoomsOnEveryPlatform() async throws {
        let daemon = try await start()
        let client = try await daemon.connect(.unix)
        let platforms = try await client.unary(RoomService.listPlatforms, ListPlatformsRequest()).platforms
        XCTAssertEqual(platforms.map(\.platformId), ["self", "douyin", "kuaishou"])
        XCTAssertTrue(platforms.allSatisfy(\.reachable), "\(platforms)")

        let own = try await create(client, "self", title: "Own").room!
        XCTAssertEqual(own.pushServer, "rtmp://127.0.0.1:\(daemon.rtmpPort)/live", "the push server follows the RTMP listener")
        XCTAssertEqual(own.playMode, .embedded)
        XCTAssertEqual(own.status, .notStarted)
        XCTAssertEqual(own.keyStatus, .valid)

        let douyin = try await create(client, "douyin", title: "On Douyin", kind: .meeting).room!
        XCTAssertEqual(douyin.pushServer, "rtmp://127.0.0.1:\(daemon.rtmpPort)/live", "relay by default: the broadcaster publishes to us")
        XCTAssertEqual(douyin.ingest, .relay)
        XCTAssertEqual(douyin.playMode, .external)
        XCTAssertEqual(douyin.kind, .meeting)
        XCTAssertTrue(douyin.playUrl.hasPrefix("https://douyin.example/live/"))
        let onPlatform = try sims[0].rooms()
        XCTAssertEqual(onPlatform.map(\.id), [douyin.platformRoomId])
        XCTAssertNotEqual(onPlatform.first?.key, douyin.streamKey, "relay: we hand out our key and keep the platform's")

        var embedded = CreateRoomRequest()
        embedded.kind = .live
        embedded.platformId = "kuaishou"
        embedded.title = "Watch with us"
        embedded.playMode = .embedded
        let ks = try await client.unary(RoomService.createRoom, embedded).room!
        XCTAssertTrue(ks.playUrl.hasPrefix("http://127.0.0.1:") && ks.playUrl.hasSuffix("/play/\(ks.roomId)"),
                      "embedded play mode plays through us, in our web player: \(ks.playUrl)")

        // Paging and filters.
        var list = ListRoomsRequest()
        list.pageSize = 2
        let page1 = try await client.unary(RoomService.listRooms, list)
        XCTAssertEqual(page1.rooms.map(\.roomId), [ks.roomId, douyin.roomId])
        XCTAssertFalse(page1.nextPageToken.isEmpty)
        list.pageToken = page1.nextPageToken
        let page2 = try await client.unary(RoomService.listRooms, list)
        XCTAssertEqual(page2.rooms.map(\.roomId), [own.roomId])
        XCTAssertEqual(page2.nextPageToken, "")
        var byPlatform = ListRoomsRequest()
        byPlatform.platformId = "douyin"
        let douyinRooms = try await client.unary(RoomService.listRooms, byPlatform).rooms
        XCTAssertEqual(douyinRooms.map(\.roomId), [douyin.roomId])
        var bad = ListRoomsRequest()
        bad.pageToken = "garbage!"
        await expect(.invalidArgument, containing: "page_token") { try await client.unary(RoomService.listRooms, bad) }
        await client.close()
        try await daemon.stop()
    }

    func testDuplicateRequestIdReturnsTheSameRoom() async throws {
        let daemon = try await start()
        let client = try await daemon.connect(.unix)
        let first = try await create(client, "douyin", requestId: "order-42")
        let second = try await create(client, "douyin", requestId: "order-42")
        XCTAssertTrue(first.created)
        XCTAssertFalse(second.created)
        XCTAssertEqual(first.room, second.room)
        XCTAssertEqual(try sims[0].rooms().count, 1, "the platform has one room")
        await expect(.alreadyExists, containing: "order-42") { try await self.create(client, "self", requestId: "order-42") }
        await client.close()
        try await daemon.stop()
    }

    func testConnectorDownSlowOrFailing() async throws {
        let ghost = """
            [platform.ghost]
            connector = "unix:\(dir.path)/nobody-listens.sock"
            timeout_ms = 500

            """
        let daemon = try await start(sims: [("slow", ["--delay-ms", "1500"]), ("broken", ["--fail"])], timeoutMs: 300, extraConfig: ghost)
        let client = try await daemon.connect(.unix)
        await expect(.unavailable, containing: "ghost") { try await self.create(client, "ghost") }
        await expect(.unavailable, containing: "outage") { try await self.create(client, "broken") }
        await expect(.deadlineExceeded, containing: "slow did not answer") { try await self.create(client, "slow", requestId: "late-1") }

        let platforms = try await client.unary(RoomService.listPlatforms, ListPlatformsRequest()).platforms
        let ghostInfo = try XCTUnwrap(platforms.first { $0.platformId == "ghost" })
        XCTAssertFalse(ghostInfo.reachable)
        XCTAssertTrue(ghostInfo.unreachableReason.contains("unreachable"), ghostInfo.unreachableReason)

        // Nothing half-made: no room here, and the slow platform's late room is closed or never made.
        let rooms = try await client.unary(RoomService.listRooms, ListRoomsRequest()).rooms
        XCTAssertEqual(rooms.count, 0)
        try await Task.sleep(for: .milliseconds(3500))
        let late = try sims[0].rooms()
        XCTAssertTrue(late.allSatisfy(\.closed), "the slow platform kept an open room: \(late)")
        await client.close()
        try await daemon.stop()
    }

    func testExpiredKeyRotationAndPublishing() async throws {
        let daemon = try await start(sims: [("douyin", [])])
        let client = try await daemon.connect(.unix)
        let room = try await create(client, "self").room!
        let ok = try await publish(client, room: room.roomId, key: room.streamKey)
        XCTAssertEqual(ok.chunksReceived, 2)
        XCTAssertEqual(ok.bytesReceived, 2000)

        // A day later the key reads expired and cannot publish.
        var advance = AdvanceClockRequest()
        advance.byMs = 24 * 3_600_000 + 1000
        _ = try await client.unary(TestControl.advanceClock, advance)
        let v1 = try await get(client, room.roomId).keyStatus
        XCTAssertEqual(v1, .expired)
        await expect(.permissionDenied, containing: "expired") { try await self.publish(client, room: room.roomId, key: room.streamKey) }

        // Rotation gives a valid key; the old one is refused at once.
        let rotated = try await client.unary(RoomService.rotateKey, { var r = RotateKeyRequest(); r.roomId = room.roomId; return r }()).room!
        XCTAssertNotEqual(rotated.streamKey, room.streamKey)
        XCTAssertEqual(rotated.keyStatus, .valid)
        await expect(.permissionDenied, containing: "wrong stream key") { try await self.publish(client, room: room.roomId, key: room.streamKey) }
        let again = try await publish(client, room: room.roomId, key: rotated.streamKey)
        XCTAssertEqual(again.chunksReceived, 2)

        // On an external platform rotation goes through the connector.
        let ext = try await create(client, "douyin").room!
        let platformKey = try sims[0].rooms().first?.key
        let extRotated = try await client.unary(RoomService.rotateKey, { var r = RotateKeyRequest(); r.roomId = ext.roomId; return r }()).room!
        XCTAssertNotEqual(try sims[0].rooms().first?.key, platformKey, "the platform's key is rotated too")
        XCTAssertNotEqual(extRotated.streamKey, ext.streamKey)
        // Keys never reach the log, even at debug level.
        let log = daemon.log_()
        XCTAssertFalse(log.isEmpty)
        for key in [room.streamKey, rotated.streamKey, ext.streamKey, extRotated.streamKey, sims[0].token] {
            XCTAssertFalse(log.contains(key), "a key or token was logged")
        }
        await client.close()
        try await daemon.stop()
    }

    func testRefreshAndClose() async throws {
        let daemon = try await start(sims: [("douyin", [])])
        let client = try await daemon.connect(.unix)
        let room = try await create(client, "douyin").room!
        // The platform ends the room on its side; RefreshRoom picks that up.
        let sim = sims[0]
        var simClientConfiguration = ClientConfiguration()
        simClientConfiguration.defaultMetadata.add("authorization", "Bearer \(sim.token)")
        let direct = try await RPCClient.connect(to: .unix(path: sim.socketPath), configuration: simClientConfiguration)
        var close = ClosePlatformRoomRequest()
        close.platformRoomId = room.platformRoomId
        _ = try await direct.unary(PlatformConnector.closePlatformRoom, close)
        await direct.close()
        let refreshed = try await client.unary(RoomService.refreshRoom, { var r = RefreshRoomRequest(); r.roomId = room.roomId; return r }()).room!
        XCTAssertEqual(refreshed.status, .ended)

        let own = try await create(client, "self").room!
        let closed = try await client.unary(RoomService.closeRoom, { var r = CloseRoomRequest(); r.roomId = own.roomId; return r }()).room!
        XCTAssertEqual(closed.status, .ended)
        await expect(.failedPrecondition, containing: "ended") { try await self.publish(client, room: own.roomId, key: own.streamKey) }
        await expect(.notFound, containing: "no room") { try await self.get(client, "rm_nope") }
        await client.close()
        try await daemon.stop()
    }

    func testRestartAndKill9KeepEverything() async throws {
        let first = try await start(sims: [("douyin", [])])
        var client = try await first.connect(.unix)
        let own = try await create(client, "self").room!
        let ext = try await create(client, "douyin").room!
        let rotated = try await client.unary(RoomService.rotateKey, { var r = RotateKeyRequest(); r.roomId = own.roomId; return r }()).room!
        let closed = try await client.unary(RoomService.closeRoom, { var r = CloseRoomRequest(); r.roomId = ext.roomId; return r }()).room!
        await client.close()
        try await first.stop()

        let config = dir.appendingPathComponent("liveroomd.conf").path
        let second = try await DaemonProcess(arguments: ["--config", config], directory: dir)
        client = try await second.connect(.unix)
        let v2 = try await get(client, own.roomId)
        XCTAssertEqual(v2, rotated)
        var v3 = try await get(client, ext.roomId)
        v3.destinations = []  // GetRoom lists them; CloseRoom's answer does not
        XCTAssertEqual(v3, closed)
        // kill -9 right after an acknowledged create loses nothing.
        let acked = try await create(client, "self", title: "Just made").room!
        second.signal(SIGKILL)
        try await second.waitForExit()
        await client.close()

        let third = try await DaemonProcess(arguments: ["--config", config], directory: dir)
        client = try await third.connect(.unix)
        let v4 = try await get(client, acked.roomId)
        XCTAssertEqual(v4, acked)
        let ok = try await publish(client, room: rotated.roomId, key: rotated.streamKey)
        XCTAssertEqual(ok.chunksReceived, 2, "the rotated key still works after two restarts")
        await client.close()
        try await third.stop()
    }

    func testBadRequests() async throws {
        let daemon = try await start(sims: [("kuaishou", [])])
        let client = try await daemon.connect(.unix)
        await expect(.invalidArgument, containing: "unknown platform \"nope\"; known platforms: self, kuaishou") {
            try await self.create(client, "nope")
        }
        await expect(.invalidArgument, containing: "title is required") { try await self.create(client, "self", title: "") }
        await expect(.invalidArgument, containing: "does not support meeting") { try await self.create(client, "kuaishou", kind: .meeting) }
        await expect(.invalidArgument, containing: "first StreamData message must be `start`") {
            let call = try await client.streaming(MediaService.streamData)
            var m = StreamDataRequest()
            m.message = .chunk(MediaChunk())
            try await call.send(m)
            return try await call.finish()
        }
        // Over TCP the room service needs the token.
        let anonymous = try await daemon.connect(.tcp, withToken: false)
        await expect(.unauthenticated) { try await self.create(anonymous, "self") }
        await anonymous.close()
        let tcp = try await daemon.connect(.tcp)
        let v5 = try await create(tcp, "self").created
        XCTAssertTrue(v5)
        await tcp.close()
        await client.close()
        try await daemon.stop()
    }

    func testFullStoreRefusesWritesAndKeepsServingReads() async throws {
        let daemon = try await start(sims: [], extraConfig: "store_max_page_count = 40\n")
        let client = try await daemon.connect(.unix)
        var made: [Room] = []
        var refusal: RPCStatus?
        for i in 0..<2000 {
            do {
                made.append(try await create(client, "self", title: String(repeating: "t", count: 180) + "\(i)").room!)
            } catch let s as RPCStatus {
                refusal = s
                break
            }
        }
        let status = try XCTUnwrap(refusal)
        XCTAssertEqual(status.code, .unavailable)
        XCTAssertTrue(status.message.contains("full"), status.message)
        let v6 = try await get(client, made[0].roomId)
        XCTAssertEqual(v6, made[0])
        var all = ListRoomsRequest()
        all.pageSize = 1000
        let listed = try await client.unary(RoomService.listRooms, all).rooms.count
        XCTAssertEqual(listed, made.count)
        await client.close()
        try await daemon.stop()
    }
}
