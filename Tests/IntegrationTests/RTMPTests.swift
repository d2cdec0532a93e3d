import Foundation
import LiveRoomMessages
import LiveRoomRPC
import LiveRoomTesting
import NIOCore
import XCTest

/// ffmpeg publishing over RTMP to a real daemon; what viewers get is checked with ffprobe.
final class RTMPTests: XCTestCase {
    override func setUp() async throws {
        for tool in ["ffmpeg", "ffprobe"] where Tool.find(tool) == nil {
            // tools/test installs Debian's ffmpeg; without it only a developer's partial setup skips.
            if ProcessInfo.processInfo.environment["CI"] != nil { XCTFail("\(tool) is not installed (tools/install-deps installs it)") }
            throw XCTSkip("\(tool) is not installed; run tools/install-deps")
        }
    }

    func room(_ client: RPCClient) async throws -> Room {
        var r = CreateRoomRequest()
        r.kind = .live
        r.platformId = "self"
        r.title = "RTMP test"
        return try await client.unary(RoomService.createRoom, r).room!
    }

    func getRoom(_ client: RPCClient, _ room: Room) async throws -> Room {
        var r = GetRoomRequest()
        r.roomId = room.roomId
        return try await client.unary(RoomService.getRoom, r).room!
    }

    /// ffmpeg arguments publishing `seconds` of test video (H.264) and tone (AAC) as FLV.
    static func ffmpegArguments(to url: String, seconds: Double, realtime: Bool = false) -> [String] {
        ["-nostdin", "-hide_banner", "-loglevel", "error"] + (realtime ? ["-re"] : []) + [
            "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
            "-t", String(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-f", "flv", url,
        ]
    }

    /// Collects a viewer's stream until the publisher ends.
    static func collect(_ viewer: StreamingCall<WatchRequest, WatchResponse>) async throws -> (bytes: ByteBuffer, chunks: [MediaChunk]) {
        var all = ByteBuffer()
        var chunks: [MediaChunk] = []
        for try await m in viewer.responses {
            switch m.message {
            case .chunk(var c)?:
                chunks.append(c)
                all.writeBuffer(&c.payload)
            case .event(let e)? where e.kind == .ended: return (all, chunks)
            default: break
            }
        }
        return (all, chunks)
    }

    func testFFmpegPublishIsWatchableAndProbesAsSent() async throws {
        let d = try await DaemonProcess()
        let client = try await d.connect(.unix)
        let room = try await room(client)
        XCTAssertEqual(room.pushServer, "rtmp://127.0.0.1:\(d.rtmpPort)/live", "the push server points at the RTMP listener")
        var w = WatchRequest()
        w.roomId = room.roomId
        w.viewerId = "viewer-1"
        let viewer = try await client.serverStreaming(MediaService.watch, w)
        let collecting = Task { try await RTMPTests.collect(viewer) }
        let publish = try await Tool.run("ffmpeg", Self.ffmpegArguments(to: "\(room.pushServer)/\(room.streamKey)", seconds: 2))
        XCTAssertEqual(publish.status, 0, "ffmpeg published: \(publish.stderr)")
        let (bytes, chunks) = try await collecting.value
        viewer.cancel()

        XCTAssertTrue(chunks.first?.header ?? false, "the stream starts with the FLV header")
        XCTAssertGreaterThan(chunks.filter(\.keyframe).count, 0, "keyframes are marked from the video tags")
        let file = d.directory.appendingPathComponent("watched.flv")
        try Data(bytes.readableBytesView).write(to: file)
        let probe = try await Tool.probe(file.path)
        XCTAssertEqual(probe.streams, ["audio:aac", "video:h264"], "the same video and audio streams")
        XCTAssertEqual(probe.duration, 2.0, accuracy: 0.3, "about the same duration")

        let after = try await getRoom(client, room)
        XCTAssertEqual(after.status, .notStarted, "back to not started when the publisher ends")
        await client.close()
        try await d.stop()
    }

    func testLateViewerGetsAStreamThatPlaysFromItsFirstByte() async throws {
        let d = try await DaemonProcess()
        let client = try await d.connect(.unix)
        let room = try await room(client)
        let url = "\(room.pushServer)/\(room.streamKey)"
        let arguments = Self.ffmpegArguments(to: url, seconds: 4, realtime: true)
        let publisher = Task { try await Tool.run("ffmpeg", arguments) }
        for _ in 0..<200 where try await getRoom(client, room).status != .live { try await Task.sleep(for: .milliseconds(20)) }
        try await Task.sleep(for: .milliseconds(1500))
        var w = WatchRequest()
        w.roomId = room.roomId
        w.viewerId = "late"
        let viewer = try await client.serverStreaming(MediaService.watch, w)
        let (bytes, chunks) = try await Self.collect(viewer)
        viewer.cancel()
        let published = try await publisher.value
        XCTAssertEqual(published.status, 0, published.stderr)
        let firstMedia = chunks.firstIndex { !$0.header }
        XCTAssertNotNil(firstMedia)
        XCTAssertTrue(chunks[firstMedia!].keyframe, "a late viewer's media starts at a keyframe")
        let file = d.directory.appendingPathComponent("late.flv")
        try Data(bytes.readableBytesView).write(to: file)
        let probe = try await Tool.probe(file.path)
        XCTAssertEqual(probe.streams, ["audio:aac", "video:h264"], "header replayed: both streams decodable")
        XCTAssertTrue(probe.decodeErrors.isEmpty, "decodes from the first byte: \(probe.decodeErrors)")
        await client.close()
        try await d.stop()
    }

    func testWrongAndExpiredKeysAreRefused() async throws {
        let d = try await DaemonProcess()
        let client = try await d.connect(.unix)
        let room = try await room(client)
        let wrong = try await Tool.run("ffmpeg", Self.ffmpegArguments(to: "\(room.pushServer)/sk_not_the_key", seconds: 0.5))
        XCTAssertNotEqual(wrong.status, 0)
        XCTAssertTrue(wrong.stderr.contains("wrong stream key"), wrong.stderr)

        var advance = AdvanceClockRequest()
        advance.byMs = 25 * 3600 * 1000
        _ = try await client.unary(TestControl.advanceClock, advance)
        let expired = try await Tool.run("ffmpeg", Self.ffmpegArguments(to: "\(room.pushServer)/\(room.streamKey)", seconds: 0.5))
        XCTAssertNotEqual(expired.status, 0)
        XCTAssertTrue(expired.stderr.contains("expired"), expired.stderr)
        let after = try await getRoom(client, room)
        XCTAssertEqual(after.status, .notStarted, "a refused publisher never turns the room live")

        // Rotated: the old key is refused, the new one works.
        var rotate = RotateKeyRequest()
        rotate.roomId = room.roomId
        let rotated = try await client.unary(RoomService.rotateKey, rotate).room!
        let old = try await Tool.run("ffmpeg", Self.ffmpegArguments(to: "\(room.pushServer)/\(room.streamKey)", seconds: 0.5))
        XCTAssertTrue(old.stderr.contains("wrong stream key"), old.stderr)
        let fresh = try await Tool.run("ffmpeg", Self.ffmpegArguments(to: "\(rotated.pushServer)/\(rotated.streamKey)", seconds: 0.5))
        XCTAssertEqual(fresh.status, 0, fresh.stderr)
        await client.close()
        try await d.stop()
    }

    func testSecondPublisherTakesOver() async throws {
        let d = try await DaemonProcess()
        let client = try await d.connect(.unix)
        let room = try await room(client)
        let url = "\(room.pushServer)/\(room.streamKey)"
        let started = Date()
        let arguments = Self.ffmpegArguments(to: url, seconds: 60, realtime: true)
        let first = Task { try await Tool.run("ffmpeg", arguments) }
        for _ in 0..<300 where try await getRoom(client, room).status != .live { try await Task.sleep(for: .milliseconds(20)) }
        let second = try await Tool.run("ffmpeg", Self.ffmpegArguments(to: url, seconds: 1))
        XCTAssertEqual(second.status, 0, "the newer publisher is accepted: \(second.stderr)")
        let firstResult = try await first.value
        XCTAssertLessThan(Date().timeIntervalSince(started), 50, "the first publisher was cut off, not left to finish")
        XCTAssertNotEqual(firstResult.status, 0, "the first publisher's connection was closed")
        await client.close()
        try await d.stop()
    }

    func testGarbageOnTheRTMPPortClosesOnlyThatConnection() async throws {
        let d = try await DaemonProcess()
        let rtmp = Endpoint.tcp(host: "127.0.0.1", port: d.rtmpPort)
        // Not RTMP at all.
        let http = try await RawConnection.connect(rtmp).exchange(Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        XCTAssertTrue(http.closed, "a wrong handshake version closes the connection")
        // A good handshake, then a chunk stream that starts without a full header.
        var bytes: [UInt8] = [3] + [UInt8](repeating: 7, count: 1536) + [UInt8](repeating: 0, count: 1536)
        bytes += [0xC3] + [UInt8](repeating: 0xFF, count: 300)
        let bad = try await RawConnection.connect(rtmp).exchange(bytes)
        XCTAssertTrue(bad.closed, "a malformed chunk closes the connection")
        XCTAssertGreaterThanOrEqual(bad.received.count, 1 + 2 * 1536, "after S0, S1 and S2")
        XCTAssertEqual(Array(bad.received[1537..<(1537 + 1536)]), [UInt8](repeating: 7, count: 1536), "S2 echoes C1")
        // A message claiming to be larger than allowed.
        var huge: [UInt8] = [3] + [UInt8](repeating: 1, count: 1536) + [UInt8](repeating: 0, count: 1536)
        huge += [0x03, 0, 0, 0, 0xFF, 0xFF, 0xFF, 20, 0, 0, 0, 0] + [UInt8](repeating: 0, count: 200)
        let tooBig = try await RawConnection.connect(rtmp).exchange(huge)
        XCTAssertTrue(tooBig.closed, "an oversized message closes the connection")

        // The daemon carries on: RPC works and ffmpeg can still publish.
        let client = try await d.connect(.unix)
        let room = try await room(client)
        let ok = try await Tool.run("ffmpeg", Self.ffmpegArguments(to: "\(room.pushServer)/\(room.streamKey)", seconds: 0.5))
        XCTAssertEqual(ok.status, 0, ok.stderr)
        await client.close()
        try await d.stop()
    }
}

/// External programs used by the tests (ffmpeg, ffprobe).
enum Tool {
    struct Run: Sendable {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    static func find(_ name: String) -> String? {
        if name.contains("/") { return FileManager.default.isExecutableFile(atPath: name) ? name : nil }
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            let path = "\(dir)/\(name)"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return nil
    }

    /// Runs to completion off the cooperative pool (it blocks on pipes); killed after `timeout`.
    static func run(_ name: String, _ arguments: [String], timeout: TimeInterval = 120) async throws -> Run {
        guard let path = find(name) else { throw CocoaError(.fileNoSuchFile, userInfo: [NSLocalizedDescriptionKey: "\(name) not found"]) }
        return try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                let p = Process()
                p.executableURL = URL(fileURLWithPath: path)
                p.arguments = arguments
                let out = Pipe(), err = Pipe()
                p.standardOutput = out
                p.standardError = err
                do { try p.run() } catch {
                    continuation.resume(throwing: error)
                    return
                }
                let killer = DispatchWorkItem { if p.isRunning { p.terminate() } }
                DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: killer)
                let errData = NSLockedData()
                let errThread = Thread { errData.set(err.fileHandleForReading.readDataToEndOfFile()) }
                errThread.start()
                let o = out.fileHandleForReading.readDataToEndOfFile()
                p.waitUntilExit()
                killer.cancel()
                let e = errData.wait()
                continuation.resume(returning: Run(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
                                                   stderr: String(decoding: e, as: UTF8.self)))
            }
        }
    }

    struct Probe {
        /// "type:codec", sorted.
        var streams: [String]
        var duration: Double
        /// What ffmpeg complained about while decoding every frame.
        var decodeErrors: String
    }

    static func probe(_ file: String) async throws -> Probe {
        let r = try await run("ffprobe", ["-v", "error", "-show_entries", "stream=codec_type,codec_name:format=duration", "-of", "json", file])
        guard r.status == 0, let json = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else {
            throw CocoaError(.fileReadCorruptFile, userInfo: [NSLocalizedDescriptionKey: "ffprobe failed: \(r.stderr)"])
        }
        let streams = (json["streams"] as? [[String: Any]] ?? []).map { "\($0["codec_type"] ?? "?"):\($0["codec_name"] ?? "?")" }.sorted()
        let duration = Double((json["format"] as? [String: Any])?["duration"] as? String ?? "") ?? 0
        let decode = try await run("ffmpeg", ["-nostdin", "-v", "error", "-i", file, "-f", "null", "-"])
        return Probe(streams: streams, duration: duration, decodeErrors: decode.stderr)
    }
}

/// Data handed from one thread to another.
final class NSLockedData: @unchecked Sendable {
    private let condition = NSCondition()
    private var data: Data?

    func set(_ d: Data) {
        condition.lock()
        data = d
        condition.signal()
        condition.unlock()
    }

    func wait() -> Data {
        condition.lock()
        while data == nil { condition.wait() }
        let d = data!
        condition.unlock()
        return d
    }
}
