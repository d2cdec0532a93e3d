import Foundation
import LiveRoomRTMP
import LiveRoomTesting
import NIOConcurrencyHelpers
import NIOCore
import XCTest

/// The RTMP client against a real nginx-rtmp: publishing, playing back, refusals.
final class RTMPClientTests: XCTestCase {
    /// A short FLV (H.264 + AAC) made by ffmpeg, as tags.
    static func sampleTags(seconds: Int = 2) throws -> [FLVTag] {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("lr-sample-\(UUID().uuidString.prefix(6)).flv")
        defer { try? FileManager.default.removeItem(at: file) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/ffmpeg")
        p.arguments = ["-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=25",
                       "-f", "lavfi", "-i", "sine", "-t", "\(seconds)", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25",
                       "-c:a", "aac", "-f", "flv", file.path]
        try p.run()
        p.waitUntilExit()
        var reader = FLVTagReader()
        reader.feed(ByteBuffer(bytes: try Data(contentsOf: file)))
        var tags: [FLVTag] = []
        while let item = try reader.next() { if case .tag(let t) = item { tags.append(t) } }
        return tags
    }

    func requireNginx() throws -> NginxRTMP {
        try XCTSkipUnless(NginxRTMP.isAvailable, "nginx with the RTMP module is not installed (tools/test installs it)")
        return try NginxRTMP(directory: FileManager.default.temporaryDirectory.appendingPathComponent("lr-nginx-\(UUID().uuidString.prefix(6))"))
    }

    func testFLVReaderFindsTagsWhateverTheCuts() throws {
        let tags = try Self.sampleTags(seconds: 1)
        XCTAssertGreaterThan(tags.count, 30)
        var whole = ByteBuffer(bytes: [0x46, 0x4C, 0x56, 1, 5, 0, 0, 0, 9, 0, 0, 0, 0])
        for t in tags {
            whole.writeInteger(t.type)
            whole.writeBytes([UInt8(t.data.readableBytes >> 16), UInt8(t.data.readableBytes >> 8 & 0xFF), UInt8(t.data.readableBytes & 0xFF)])
            whole.writeBytes([UInt8(t.timestamp >> 16 & 0xFF), UInt8(t.timestamp >> 8 & 0xFF), UInt8(t.timestamp & 0xFF), UInt8(t.timestamp >> 24)])
            whole.writeBytes([0, 0, 0])
            var d = t.data
            whole.writeBuffer(&d)
            whole.writeInteger(UInt32(11 + t.data.readableBytes))
        }
        for cut in [1, 7, 100, 4096] {
            var reader = FLVTagReader()
            var out: [FLVTag] = []
            var starts = 0
            var rest = whole
            while rest.readableBytes > 0 {
                reader.feed(rest.readSlice(length: min(cut, rest.readableBytes))!)
                while let item = try reader.next() {
                    switch item {
                    case .streamStart: starts += 1
                    case .tag(let t): out.append(t)
                    }
                }
            }
            XCTAssertEqual(starts, 1)
            XCTAssertEqual(out, tags, "cut every \(cut) bytes")
            XCTAssertEqual(reader.pendingBytes, 0)
        }
        var bad = FLVTagReader()
        bad.feed(ByteBuffer(bytes: [0x47, 0x40, 0x00, 0x10] + [UInt8](repeating: 0, count: 20)))  // MPEG-TS
        XCTAssertThrowsError(try bad.next())
    }

    func testURLs() throws {
        let u = try RTMPURL("rtmp://example.com:1936/live/sub")
        XCTAssertEqual(u, RTMPURL(host: "example.com", port: 1936, app: "live/sub"))
        XCTAssertEqual(try RTMPURL("rtmp://h/live").port, 1935)
        XCTAssertEqual(try RTMPURL("rtmp://[::1]:99/app/").description, "rtmp://[::1]:99/app")
        let (server, stream) = try RTMPURL.splitPlay("rtmp://127.0.0.1:5/live/key1")
        XCTAssertEqual(server.app, "live")
        XCTAssertEqual(stream, "key1")
        for bad in ["http://x/live", "rtmp://", "rtmp://host", "rtmp://host:0/live", "rtmp://host:99999/live", "rtmp://:5/live", "rtmp://h:x/live"] {
            XCTAssertThrowsError(try RTMPURL(bad), bad)
        }
        XCTAssertThrowsError(try RTMPURL.splitPlay("rtmp://h/live"))
    }

    /// Publishes a real stream to nginx and plays it back from nginx.
    func testPublishesToNginxAndPlaysBack() async throws {
        let nginx = try requireNginx()
        defer { nginx.stop() }
        let tags = try Self.sampleTags(seconds: 2)
        let server = try RTMPURL(nginx.url)
        let received = NIOLockedValueBox<[RTMPMessage]>([])
        let playing = NIOLockedValueBox<Task<Void, Error>?>(nil)
        try await RTMPClient.publish(to: server, streamKey: "k1") { publisher in
            // Headers first, then start a player, then the rest in real time.
            let headers = tags.prefix { $0.timestamp == 0 }
            for t in headers { try await publisher.send(t) }
            playing.withLockedValue {
                $0 = Task {
                    try await RTMPClient.play(from: server, stream: "k1") { m in received.withLockedValue { $0.append(m) } }
                }
            }
            try await Task.sleep(for: .milliseconds(300))
            let start = ContinuousClock.now
            for t in tags.dropFirst(headers.count) {
                let due = start + .milliseconds(Int(t.timestamp))
                if due > .now { try await Task.sleep(until: due) }
                try await publisher.send(t)
            }
            try await Task.sleep(for: .milliseconds(500))
        }
        // Unpublishing ends the player's stream.
        let player = playing.withLockedValue { $0 }!
        try await withThrowingTaskGroup(of: Void.self) { g in
            g.addTask { try await player.value }
            g.addTask { try await Task.sleep(for: .seconds(10)); player.cancel() }
            try await g.next()
            g.cancelAll()
        }
        let got = received.withLockedValue { $0 }
        let video = got.filter { $0.type == .video }
        XCTAssertTrue(video.contains { $0.payload.getBytes(at: $0.payload.readerIndex, length: 2) == [0x17, 0x00] }, "AVC sequence header")
        XCTAssertTrue(got.contains { $0.type == .audio && $0.payload.getBytes(at: $0.payload.readerIndex, length: 2) == [0xAF, 0x00] },
                      "AAC sequence header")
        XCTAssertGreaterThan(video.count, 30, "about 50 video frames were sent")
        XCTAssertGreaterThan(video.last!.timestamp, 1500)
    }

    /// nginx refusing the key (its on_publish hook said no) is a refusal, not a failure to retry.
    func testRefusedKeyAndUnreachableServer() async throws {
        try XCTSkipUnless(NginxRTMP.isAvailable)
        // on_publish pointing at a port nobody answers: nginx refuses every publisher.
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lr-nginx-\(UUID().uuidString.prefix(6))")
        let nginx = try NginxRTMP(directory: dir, callbacks: "http://127.0.0.1:\(try NginxRTMP.freePort())")
        defer { nginx.stop() }
        do {
            try await RTMPClient.publish(to: try RTMPURL(nginx.url), streamKey: "nope") { _ in }
            XCTFail("nginx accepted a key its hook refused")
        } catch let e as RTMPClientError {
            guard case .refused(let why) = e else { return XCTFail("expected a refusal, got \(e)") }
            XCTAssertTrue(why.contains("refused"), why)
        }
        do {
            try await RTMPClient.publish(to: RTMPURL(host: "127.0.0.1", port: try NginxRTMP.freePort(), app: "live"), streamKey: "k") { _ in }
            XCTFail("connected to nothing")
        } catch let e as RTMPClientError {
            guard case .failed(let why) = e else { return XCTFail("expected a failure, got \(e)") }
            XCTAssertTrue(why.contains("cannot connect"), why)
        }
    }
}
