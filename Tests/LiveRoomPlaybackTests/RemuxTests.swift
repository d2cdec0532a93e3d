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
        _ = FileManager.default.createFile(atPath: path, contents: Data(file.readableBytesView))
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

    /// Found by `tools/fuzz playback`: FLV whose timestamps go back made a negative part
    /// duration, and the playlist trapped formatting it. Decode times now only grow.
    func testTimestampsThatGoBackNeitherTrapNorMakeNegativeDurations() throws {
        let crash = Data(base64Encoded: Self.fuzzCrash)!
        var demuxer = StreamDemuxer()
        var p = Packager()
        var rest = ByteBuffer(bytes: crash)
        while rest.readableBytes > 0, let piece = rest.readSlice(length: min(211, rest.readableBytes)) {
            guard let items = try? demuxer.feed(piece) else { break }
            _ = p.feed(items)
        }
        _ = p.finish()
        for s in p.segments { for part in s.parts { XCTAssertGreaterThanOrEqual(part.duration, 0) } }
        let playlist = HLSPlaylist.render(p)
        XCTAssertFalse(playlist.contains("DURATION=-") || playlist.contains("#EXTINF:-"), "no negative durations listed")
    }

    static let fuzzCrash = "RkxWAQUAAAAJAAAAABIAASUAAAAAAAAAAgAKb25NZXRhRGF0YQgAAAANAAhkdXJhdGlvbgA/5BiTdLxqfwAFd2lkdGgAQEAAAAAAAAAABmhlaWdodABAQAAAAAAAAAANdmlkZW9kYXRhcmF0ZQAAAAAAAAAAAAAJZnJhbWVyYXRlAEAkAAAAAAAAAAx2aWRlb2NvZGVjaWQAQBwAAAAAAAAADWF1ZGlvZGF0YXJhdGUAQC9AAAAAAAAAD2F1ZGlvc2FtcGxlcmF0ZQBAv0AAAAAAAAAPYXVkaW9zYW1wbGVzaXplAEAwAAAAAAAAAAZzdGVyZW8BAAAMYXVkaW9jb2RlY2lkAEAkAAAAAAAAAAdlbmNvZGVyAgANTGF2ZjU5LjI3LjEwMAAIZmlsZXNpemUAQKtOAAAAAAAAAAkAAAEwCQAAKgAAAAAAAAAXAAAAAAFCwAr/4QAWZ0LACtolsBEAAAMAAQAAAwAUDxImoAEABGjOD8gAAAA1CAAABwAAAAAAAACvABWIVuUAAAAAEggAAWcAAAAAAAAArwHeAgBMYXZjNTkuMzcuMTAwAAI0p1rpyOaq/WX2/T9eFyqvaSRyREkXAzFmHMWYcxZh9a9d9a9d9e+o91dq91dq91dq/tv2v679r/G/q01TNNWzTVsxaeZinmmqZzFmnY2tdjc2xaeZip2ysRy9mHi7qn7FMo463ZncfR+NfflNrg1bpqnbK9x6123q3Rdq13KsbjrDcsp17KcdjbFcbFcbFcbFWa1Wa1Gv0a/Pr8+qlKpSqUqlK5S/KVSlUpVElElElElElElElElElElElElElElElElElElElElElElElElElElElElElElElOCnBThzLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLKZMmQMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwPgAAAFyCQAEzgAAgAAAAAAXAQAAAAAAAlEGBf//TdxF6b3m2Ui3lizYINkj7u94MjY0IC0gY29yZSAxNjQgcjMwOTUgYmFlZTQwMCAtIEguMjY0L01QRUctNCBBVkMgY29kZWMgLSBDb3B5bGVmdCAyMDAzLTIwMjIgLSBodHRwOi8vd3d3LnZpZGVvbGFuLm9yZy94MjY0Lmh0bWwgLSBvcHRpb25zOiBjYWJhYz0wIHJlZj0xIGRlYmxvY2s9MDowOjAgYW5hbHlzZT0wOjAgbWU9ZGlhIHN1Ym1lPTAgcHN5PTEgcHN5X3JkPTEuMDA6MC4wMCBtaXhlZF9yZWY9MCBtZV9yYW5nZT0xNiBjaHJvbWFfbWU9MSB0cmVsbGlzPTEgOHg4ZGN0PTAgY3FtPTAgZGVhZHpvbmU9MjEsMTEgZmFzdF9wc2tpcD0xIGNocm9tYV9xcF9vZmZzZXQ9MCB0aHJlYWRzPTEgbG9va2FoZWFkX3RocmVhZHM9MSBzbGljZWRfdGhyZWFkcz0wIG5yPTAgZGVjaW1hdGU9MSBpbnRlcmxhY2VkPTAgYmx1cmF5X2NvbXBhdD0wIGNvbnN0cmFpbmVkX2ludHJhPTAgYmZyYW1lcz0wIHdlaWdodHA9MCBrZXlpbnQ9NSBrZXlpbnRfbWluPTEgc2NlbmVjdXQ9MCBpbnRyYV9yZWZyZXNoPTAgcmM9Y3JmIG1idHJlZT0wIGNyZj0yMy4wIHFjb21wPTAuNjAgcXBtaW49MCBxcG1heD02OSBxcHN0ZXA9NCBpcF9yYXRpbz0xLjQwIGFxPTAAgAAAAnBliIQ6DGAA7EMUeFJljtf6KgmBngBWmwZjG2oQECGRAQIwAHIy8KaogzCUBKL/8OAATAAIZHAANgACA0Z0YWgpCGlW1I3j/9pC9OPynUvj1v/w4CAjFOCXCjeIdKerw4CAjAKgGg7not4ESx/31KDTCjaI9K+r1OF8cHU5Y71ekAAJ8ZjEU0G9v3yQABxzHbnAGVfvgQAAgHAAIAUKhBAHGDgAG7GUaJUovhji3Yw5v0AUnixiR/4wLEo//0gAMfGGqYN0gAzAK5oSZZy0iDOVyIFgSzgh9MyqARFSFf3sYDnNXCybtf/cF8AHD4pZZYHqlWQW55KWoNRwACwAAgHmQHaAJhQGrm2rgzJgpxZJ2krOLIQAAEAGAzk5BAAgApkeAZkgAAQAQZ0sAJQvRST2EU3jktoiBs4UKQXcEfV6iMNA7vcWAQ76vYABqGIcQrCQFrkET0AEdxnuDyDtVgXmEodyHFAEKer1OEpRRfECRL1egAR3GocHkFKrYAPCsc3raClyHDwQQABAGcAAICARAHh8UYg2xHscHRm9cEbW9AI5tAiKItkYoIpCf3/7AaY5TqQD5MlfvurMT25whPWvjxvg2ssmg6WzmBrnR7XAsxX/rgRVMxLCjJiY4MOHAAEAYKAAIGdBwEBGHgFgcBARg4BY/8cBARg4BYHAQEYOAWPEABAAkQAAoAAIA8mEPcLADoFQh7g4AdAgI4q4IAAXLAOEcVcHAALlgF3HgAHSAA4AAgIpnvALEQAsf/EALEQAseIQABAoiEAAQG4gABYCQEAAJBYDgAFgJAcAAkFgSAEPcEAAQEgUAEPcHAAQEhAAAATZCAABOAAAgAAAAACvAQD0ntmxYXXCIdWZExlmMkKP4z/9v/b2vXHFy0r3/P/p/5/ey9S5N/b7f/h/6/qHVauP2/b/t/5/rEml60mXRijwMujEnHLoxR4eHtQU0l9OI0DRQaijdRRRRuojwWX5C5yfrwXYIHCL6wrnGdcLjDdcHwk3x9Pyen0eXrLmRYzFrhK2on2C9YrIZmPlh7RgZqwMmWeWWvbNnZe+zZFvbNmwjvpFwjaJcX/aewjs2bI9r8jfeLZG66GlfFXdyznmXKfUk9Qm6ZLUh6B3gHeC08vTn6c6TEexIEbJvGDgLbBd9m+/drusI7byOulznnnnnnUJ1KVPPPPPOo30b6KKX51L1pQ/6ejja7BvidqllaIXqc/uP6qjpg2XjvZKWxuqLX0YGBiRK8SBlTkSEH2fLZx41uTTy8AAAAFDCQAADn4A5AAAAAAnAQAAAAAAAAVBmiBSLAAAABkIAAD9AAEAAAAAAK8BANrzrXA0iaHfL/44qfb+3/tbTd3cly4ksl454YOmSISkUKIrWRUYiAL5w77dnYJIIiQQbOhzd379t/y/+P33mlwb+ysAYYYYsBUqVhWUopiJqg0ZT1PTqRzb267adxHjX1n8CdbEuFQAHGvavavZOjcV9nFMlVZWNVTijrZqampZJMrXX/K0UsaCmnFBRRxoKacUFHXhBTTxBQU9oKCqiCgpxoKacVzQKeEFBXiCgpNaCgr2BQU9oKCvYFBS3BQVRQKCl2wgruFciW40FxcKCn7XovRT76oOD4DpXSpd3Lyk/urEIBph7ANMLBkiERP7QMAA0Q88DOHeBA4AAAEICQAAQgABSAAAAAAnAQAAAAAAADlBmkCLwtJgDRgzFErV+4K/uEAAj/4mIAqAAywHGwdgdEUSEiEIifeABRkQ2hio4lYgOvp+O1TfeSAAAABNCAABFwABgAAAAACvAQDmM6yQWwwUnIcQkFAlP6XWV/+3/2iTmSRaRIlWh8/cPDfL/2n3fpbuH3P9x/DlAHwvZ3oH5/yThvsXmH3v8p9Z9a7Z/DoQpElsS5TN+dxF6b3m2Ui3lizYINkj7u94MjY0IC0gY29yZSAxNjQgcjMwOTUgYmFlZTQwMCAtIEguMjY0L01QRUctNCBBVkMgY29kZWMgLSBDb3B5bGVmdCAyMDAzLTIwMjIgLSBodHRwOi8vd3d3LnZpZGVvbGFuLm9yZy94MjY0Lmh0bWwgLSBvcHRpb25zOiBjYWJhYz0wIHJlZj0xIGRlYmxvY2s9MDowOjAgYW5hbHlzZT0wOjAgbWU9ZGlhIHN1Ym1lPTAgcHN5PTEgcHN5X3JkPTEuMDA6MC4wMCBtaXhlAE9BmmK8bHMIJaJn1L+8CL+3f6fIy3c0W2qXwgFQqQMSBAASIiJCY4KrMEs1yZIOrntm2Y6pXV8xqpVYACOD7MgveMK2Wo6rxSopIc2NWoSAAAAAYwgAAO8AAgAAAAAArwEBPjOIlHLijzVS/z9e98LkkkSRIiRCDma3PRcyqHnMs5bgoV0G4KFdDkFGRhyHKllNML32zW3CXPWfzUDgP+7PlJrn5CHfWyVzLPRAyLma3PRZZ6OdzLO1uei5mqOdzLPRzuRczW56Lmao53Ms9EDIuZrc9FzT0c7m/Fno+j0XM1ueRNPRzuZZ17nouZrc85lno53Ip2tz0XM1Q85lno52RTtbnouZVHO5lno+j0XM1ueiyz0c7mWdcD0XM1ue5ZZ6OdzLO1uei5mqHnMs9HO5FzNbnouZVHO5lnogZFzNbnovlPRzuZZ6Nz0XM1u4AAAA+gkAAFUAAhAAAAAAJwEAAAAAAABMQZqA68bgJ6MyAoSYvNiV3vhgJRXMDgAAAAAAAAQJevhx0q2g9/w0PoTCAFeFZGs+5ZUUv72+gpnnvRu1HnqTi6AAVtG3P1+vVFXu/nlrUOw4+deSAAAAYAkAAAUAAhAAAAAAFwIAAAAAAAAQ"

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
