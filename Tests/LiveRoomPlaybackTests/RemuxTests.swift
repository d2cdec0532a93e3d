import Foundation
import LiveRoomPlayback
import NIOCore
import XCTest

/// Remuxes real ffmpeg output (FLV and MPEG-TS, H.264 + AAC) and has ffprobe read the result.
final class RemuxTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("remux-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    @discardableResult
    func run(_ tool: String, _ args: [String]) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/\(tool)")
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, "\(tool) \(args.joined(separator: " "))")
        return String(decoding: data, as: UTF8.self)
    }

    /// 4 s of 640x360 25 fps H.264 with a keyframe every second, and 44.1 kHz AAC.
    func encode(_ format: String, seconds: Int = 4) throws -> [UInt8] {
        let file = dir.appendingPathComponent("in.\(format)").path
        try run("ffmpeg", ["-v", "error", "-f", "lavfi", "-i", "testsrc=size=640x360:rate=25", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
                           "-t", "\(seconds)", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-bf", "2", "-pix_fmt", "yuv420p",
                           "-c:a", "aac", "-b:a", "64k", "-f", format == "ts" ? "mpegts" : "flv", file])
        return Array(try Data(contentsOf: URL(fileURLWithPath: file)))
    }

    /// Feeds `bytes` in uneven pieces, as a room's chunks come.
    func package(_ bytes: [UInt8], settings: Packager.Settings = Packager.Settings()) throws -> Packager {
        var demuxer = StreamDemuxer()
        var packager = Packager(settings: settings)
        var i = 0
        var step = 1000
        while i < bytes.count {
            let n = min(step, bytes.count - i)
            _ = packager.feed(try demuxer.feed(ByteBuffer(bytes: bytes[i..<(i + n)])))
            i += n
            step = step == 1000 ? 7777 : 1000
        }
        _ = packager.feed(demuxer.flush())
        _ = packager.finish()
        return packager
    }

    func probe(_ path: String) throws -> [String: Any] {
        let json = try run("ffprobe", ["-v", "error", "-allowed_extensions", "ALL", "-show_streams", "-show_format", "-of", "json", path])
        return try JSONSerialization.jsonObject(with: Data(json.utf8)) as! [String: Any]
    }

    func writeMP4(_ p: Packager, function name: String = #function) throws -> String {
        var file = p.inits[p.generation]!
        for s in p.segments { var d = s.data; file.writeBuffer(&d) }
        let path = dir.appendingPathComponent("out.mp4").path
        FileManager.default.createFile(atPath: path, contents: Data(file.readableBytesView))
        if let keep = ProcessInfo.processInfo.environment["REMUX_KEEP"] { try? FileManager.default.copyItem(atPath: path, toPath: keep + "-\(name)") }
        return path
    }

    func checkProbe(_ info: [String: Any], seconds: Double) {
        let streams = info["streams"] as! [[String: Any]]
        let video = streams.first { $0["codec_type"] as? String == "video" }
        let audio = streams.first { $0["codec_type"] as? String == "audio" }
        XCTAssertEqual(video?["codec_name"] as? String, "h264")
        XCTAssertEqual(video?["width"] as? Int, 640)
        XCTAssertEqual(video?["height"] as? Int, 360)
        XCTAssertEqual(audio?["codec_name"] as? String, "aac")
        XCTAssertEqual(audio?["sample_rate"] as? String, "44100")
        let duration = Double((info["format"] as! [String: Any])["duration"] as! String)!
        XCTAssertEqual(duration, seconds, accuracy: seconds * 0.1)
    }

    func testFLVRemuxesToFragmentedMP4ThatFFprobeReads() throws {
        let p = try package(try encode("flv"))
        XCTAssertEqual(p.tracks.video?.width, 640)
        XCTAssertEqual(p.tracks.video?.height, 360)
        XCTAssertEqual(p.tracks.audio?.sampleRate, 44100)
        XCTAssertTrue(p.tracks.codecs.hasPrefix("avc1.4d"), p.tracks.codecs)  // x264 ultrafast with B-frames: Main
        XCTAssertTrue(p.tracks.codecs.hasSuffix(",mp4a.40.2"), p.tracks.codecs)
        checkProbe(try probe(try writeMP4(p)), seconds: 4)
        // Every frame came through: 100 video frames decode.
        let frames = try run("ffprobe", ["-v", "error", "-select_streams", "v", "-count_frames", "-show_entries", "stream=nb_read_frames",
                                         "-of", "csv=p=0", dir.appendingPathComponent("out.mp4").path])
        XCTAssertEqual(frames.trimmingCharacters(in: .whitespacesAndNewlines), "100")
    }

    func testMPEGTSRemuxesToFragmentedMP4ThatFFprobeReads() throws {
        let p = try package(try encode("ts"))
        XCTAssertEqual(p.tracks.video?.width, 640)
        XCTAssertEqual(p.tracks.audio?.channels, 1)
        checkProbe(try probe(try writeMP4(p)), seconds: 4)
    }

    func testSegmentsStartAtKeyframesAndPartsStayWithinTheirTarget() throws {
        let p = try package(try encode("flv", seconds: 6))
        let segments = p.segments
        XCTAssertGreaterThanOrEqual(segments.count, 3)
        for (i, s) in segments.enumerated() {
            XCTAssertTrue(s.complete)
            XCTAssertTrue(s.parts[0].independent, "segment \(s.msn) starts at a keyframe")
            if i > 0 { XCTAssertEqual(s.msn, segments[i - 1].msn + 1) }
            XCTAssertLessThanOrEqual(s.duration, Double(p.targetDuration) + 0.5)
            for (j, part) in s.parts.enumerated() {
                XCTAssertEqual(part.index, j)
                XCTAssertLessThanOrEqual(part.duration, p.settings.partTarget + 0.001, "part \(s.msn).\(j)")
                XCTAssertGreaterThan(part.duration, 0)
            }
        }
        // 2 s segments of a 1 s GOP stream.
        XCTAssertEqual(segments[1].duration, 2, accuracy: 0.05)
    }

    func testHLSPlaylistListsPartsAndAPreloadHintAndFFprobeReadsIt() throws {
        let bytes = try encode("flv", seconds: 6)
        let p = try package(bytes)
        let playlist = HLSPlaylist.render(p)
        XCTAssertTrue(playlist.contains("#EXT-X-PART-INF:PART-TARGET=0.500"))
        XCTAssertTrue(playlist.contains("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.500"))
        XCTAssertTrue(playlist.contains("#EXT-X-MAP:URI=\"init-1.mp4\""))
        XCTAssertTrue(playlist.contains("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-\(p.nextPart.msn).0.m4s\""))
        XCTAssertTrue(playlist.contains("INDEPENDENT=YES"))
        // Written out as files, a player reads the playlist as one stream.
        try p.inits[1]!.write(to: dir.appendingPathComponent("init-1.mp4"))
        for s in p.segments {
            try s.data.write(to: dir.appendingPathComponent("seg-\(s.msn).m4s"))
            for part in s.parts { try part.data.write(to: dir.appendingPathComponent("part-\(s.msn).\(part.index).m4s")) }
        }
        let m3u8 = dir.appendingPathComponent("index.m3u8")
        try Data((playlist + "#EXT-X-ENDLIST\n").utf8).write(to: m3u8)
        checkProbe(try probe(m3u8.path), seconds: 6)
    }

    func testANewPublisherContinuesTheTimelineWithADiscontinuity() throws {
        let one = try encode("flv", seconds: 3)
        var demuxer = StreamDemuxer()
        var p = Packager()
        _ = p.feed(try demuxer.feed(ByteBuffer(bytes: one)))
        let before = p.segments.count
        // The same stream again: timestamps restart at 0 after a new FLV header.
        _ = p.feed(try demuxer.feed(ByteBuffer(bytes: one)))
        _ = p.finish()
        let after = p.segments[before...]
        XCTAssertTrue(after.first!.discontinuity)
        XCTAssertTrue(HLSPlaylist.render(p).contains("#EXT-X-DISCONTINUITY\n"))
        // Decode times never go back: the whole thing still reads as 6 s.
        checkProbe(try probe(try writeMP4(p)), seconds: 6)
    }

    func testUnsupportedCodecsAndContainersAreNamed() throws {
        var d = StreamDemuxer()
        XCTAssertThrowsError(try d.feed(ByteBuffer(bytes: Array("RIFF....WAVE".utf8)))) { error in
            XCTAssertTrue("\(error)".contains("neither FLV nor MPEG-TS"), "\(error)")
        }
        // An FLV stream with MP3 audio (sound format 2).
        var flv = StreamDemuxer()
        var b = ByteBuffer(bytes: [0x46, 0x4C, 0x56, 1, 5, 0, 0, 0, 9, 0, 0, 0, 0])
        b.writeBytes([8, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0x2F, 0xFF, 0, 0, 0, 13])
        XCTAssertThrowsError(try flv.feed(b)) { error in
            XCTAssertTrue("\(error)".contains("only AAC"), "\(error)")
        }
    }

    func testSPSParsingGivesThePictureSize() throws {
        // x264 High profile 1280x720 (crop of 1280x720 needs none) and 1920x1080 (cropped from 1088).
        let sps720: [UInt8] = [0x67, 0x64, 0x00, 0x1F, 0xAC, 0xD9, 0x40, 0x50, 0x05, 0xBB, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00, 0x00, 0x03, 0x03, 0xC0, 0xF1, 0x83, 0x19, 0x60]
        let c = try AVCConfig(sps: sps720, pps: [0x68, 0xEB, 0xE3, 0xCB, 0x22, 0xC0])
        XCTAssertEqual(c.width, 1280)
        XCTAssertEqual(c.height, 720)
        XCTAssertEqual(c.codecString, "avc1.64001f")
        XCTAssertThrowsError(try AVCConfig(record: [1, 0x64, 0, 0x1F, 0xFF, 0xE1, 0, 3, 0x67, 0x64, 0]))
    }
}

extension ByteBuffer {
    func write(to url: URL) throws { try Data(readableBytesView).write(to: url) }
}
