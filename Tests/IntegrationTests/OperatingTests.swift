import Foundation
import LiveRoomClient
import LiveRoomMessages
import LiveRoomRPC
import LiveRoomTesting
import NIOCore
import XCTest

/// Metrics, health and logs of a real daemon, as an operator sees them.
final class OperatingTests: XCTestCase {
    func builtinRoom(_ client: RPCClient, title: String) async throws -> Room {
        var create = CreateRoomRequest()
        create.kind = .live
        create.platformId = "self"
        create.title = title
        return try await client.unary(RoomService.createRoom, create).room!
    }

    func scrape(_ d: DaemonProcess, path: String = "/metrics") async throws -> String {
        let request = "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        let r = try await RawConnection.connect(.tcp(host: "127.0.0.1", port: d.metricsPort)).exchange(Array(request.utf8))
        return String(decoding: r.received, as: UTF8.self)
    }

    /// The value of one sample line, e.g. `liveroom_rooms{status="live"}`.
    func sample(_ text: String, _ series: String) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1))
        }
        return nil
    }

    func testMetricsCountCallsRoomsViewersAndBytes() async throws {
        let d = try await DaemonProcess(arguments: ["--metrics", "127.0.0.1:0"])
        XCTAssertGreaterThan(d.metricsPort, 0)
        let client = try await d.connect(.unix)
        let room = try await builtinRoom(client, title: "metrics")
        var missing = GetRoomRequest()
        missing.roomId = "rm_missing"
        do {
            _ = try await client.unary(RoomService.getRoom, missing)
            XCTFail("expected NOT_FOUND")
        } catch let s as RPCStatus { XCTAssertEqual(s.code, .notFound) }

        var w = WatchRequest()
        w.roomId = room.roomId
        w.viewerId = "v1"
        let viewer = try await client.serverStreaming(MediaService.watch, w)
        var statsRequest = GetRoomStatsRequest()
        statsRequest.roomId = room.roomId
        for _ in 0..<200 where try await client.unary(AudienceService.getRoomStats, statsRequest).viewers?.onlineNow != 1 {
            try await Task.sleep(for: .milliseconds(10))
        }
        let publisher = try await client.startPublishing(roomId: room.roomId, streamKey: room.streamKey)
        var chunk = MediaChunk()
        chunk.keyframe = true
        chunk.payload = ByteBuffer(repeating: 1, count: 1000)
        for _ in 0..<3 { try await publisher.send(chunk: chunk) }
        var it = viewer.responses.makeAsyncIterator()
        var got = 0
        while got < 3, let r = try await it.next() { if case .chunk? = r.message { got += 1 } }

        let text = try await scrape(d)
        XCTAssertTrue(text.hasPrefix("HTTP/1.1 200 OK"), text)
        XCTAssertEqual(sample(text, #"liveroom_rpc_calls_total{method="/liveroom.v1.RoomService/CreateRoom",code="OK"}"#), 1)
        XCTAssertEqual(sample(text, #"liveroom_rpc_calls_total{method="/liveroom.v1.RoomService/GetRoom",code="NOT_FOUND"}"#), 1)
        XCTAssertEqual(sample(text, #"liveroom_rpc_call_duration_seconds_count{method="/liveroom.v1.RoomService/CreateRoom"}"#), 1)
        XCTAssertEqual(sample(text, #"liveroom_rooms{status="live"}"#), 1)
        XCTAssertEqual(sample(text, #"liveroom_rooms{status="not_started"}"#), 0)
        XCTAssertEqual(sample(text, "liveroom_viewers_online"), 1)
        XCTAssertEqual(sample(text, "liveroom_media_bytes_in_total"), 3000)
        XCTAssertEqual(sample(text, "liveroom_media_bytes_out_total"), 3000)
        XCTAssertEqual(sample(text, "liveroom_media_chunks_dropped_total"), 0)

        viewer.cancel()
        _ = try await publisher.finish()
        for _ in 0..<200 where sample(try await scrape(d), "liveroom_viewers_online") != 0 { try await Task.sleep(for: .milliseconds(10)) }
        let after = try await scrape(d)
        XCTAssertEqual(sample(after, "liveroom_viewers_online"), 0, "the viewer left")
        let notFound = try await scrape(d, path: "/nope")
        XCTAssertTrue(notFound.hasPrefix("HTTP/1.1 404"), notFound)
        await client.close()
        try await d.stop()
    }

    func testHealthIsNotServingWhileTheStoreCannotBeWritten() async throws {
        let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("full-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let config = dir.appendingPathComponent("d.conf")
        try "store_max_page_count = 40\n".write(to: config, atomically: true, encoding: .utf8)
        let d = try await DaemonProcess(arguments: ["--config", config.path], directory: dir)
        let client = try await d.connect(.unix)
        let healthy = try await client.unary(Health.check, HealthCheckRequest()).status
        XCTAssertEqual(healthy, .serving)
        var refused = false
        for i in 0..<2000 where !refused {
            var r = CreateRoomRequest()
            r.kind = .live
            r.platformId = "self"
            r.title = String(repeating: "t", count: 180) + "\(i)"
            do { _ = try await client.unary(RoomService.createRoom, r) } catch let s as RPCStatus where s.code == .unavailable { refused = true }
        }
        XCTAssertTrue(refused, "the store filled up")
        var status = ServingStatus.serving
        for _ in 0..<100 where status == .serving {
            status = try await client.unary(Health.check, HealthCheckRequest()).status
            try await Task.sleep(for: .milliseconds(50))
        }
        XCTAssertEqual(status, .notServing, "health reports the store that cannot be written")
        await client.close()
        try await d.stop()
    }

    func testLogLinesNameTheCallAndRoomAndNeverASecret() async throws {
        let d = try await DaemonProcess()  // --log-level debug
        let client = try await d.connect(.unix)
        let room = try await builtinRoom(client, title: "logs")
        var rotate = RotateKeyRequest()
        rotate.roomId = room.roomId
        let rotated = try await client.unary(RoomService.rotateKey, rotate).room!
        // A publisher with the old key is refused; its call's lines still name the room.
        let publisher = try await client.startPublishing(roomId: room.roomId, streamKey: room.streamKey)
        do { _ = try await publisher.finish() } catch let s as RPCStatus { XCTAssertEqual(s.code, .permissionDenied) }
        let tcp = try await d.connect(.tcp)
        _ = try await tcp.unary(RoomService.listPlatforms, ListPlatformsRequest())
        await tcp.close()
        await client.close()
        try await d.stop()

        let log = d.log_()
        for secret in [room.streamKey, rotated.streamKey, d.token] {
            XCTAssertFalse(log.contains(secret), "a secret appeared in the log")
        }
        let callLines = log.split(separator: "\n").filter { $0.contains("call=") }
        XCTAssertGreaterThan(callLines.count, 0)
        let roomCalls = callLines.filter { $0.contains("RotateKey") || $0.contains("StreamData") || $0.contains("CreateRoom") }
        XCTAssertGreaterThanOrEqual(roomCalls.count, 3, log)
        for line in roomCalls {
            XCTAssertTrue(line.contains("room=\(room.roomId)"), "a line about a room's call names the room: \(line)")
        }
    }
}
