import Foundation
import LiveRoomMessages
import LiveRoomRPC
import LiveRoomTesting
import XCTest

/// Playing anywhere: ffmpeg publishes over RTMP (or StreamData) to a real daemon, and real
/// players read its HTTP listener: Chromium (the embedded player, through MSE and through its
/// own HLS), ffprobe and ffmpeg (HTTP-FLV, fMP4, LL-HLS), and curl for the edges.
final class PlaybackTests: XCTestCase {
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    override func setUp() async throws {
        for tool in ["ffmpeg", "ffprobe", "curl"] where Tool.find(tool) == nil {
            if ProcessInfo.processInfo.environment["CI"] != nil { XCTFail("\(tool) is not installed (tools/test installs it)") }
            throw XCTSkip("\(tool) is not installed; run tools/test")
        }
    }

    func daemon(_ settings: String = "") async throws -> DaemonProcess {
        // Metrics on a free port: tests read what the daemon served.
        let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("play-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let config = dir.appendingPathComponent("d.conf")
        try ("hls_segment_ms = 2000\nhls_part_ms = 500\n" + settings).write(to: config, atomically: true, encoding: .utf8)
        return try await DaemonProcess(arguments: ["--config", config.path, "--metrics", "127.0.0.1:0"], directory: dir)
    }

    func createRoom(_ client: RPCClient, title: String = "Playback test", public: Bool = false) async throws -> Room {
        var r = CreateRoomRequest()
        r.kind = .live
        r.platformId = "self"
        r.title = title
        r.publicPlayback = `public`
        return try await client.unary(RoomService.createRoom, r).room!
    }

    func token(_ client: RPCClient, _ room: Room, viewer: String, name: String, phone: String = "") async throws -> IssueViewerTokenResponse {
        var r = IssueViewerTokenRequest()
        r.roomId = room.roomId
        r.viewerId = viewer
        r.name = name
        r.phone = phone
        return try await client.unary(MediaService.issueViewerToken, r)
    }

    /// ffmpeg publishing `seconds` of 640x360 H.264 (a keyframe a second) and AAC, in real time.
    /// `constantKbps` pads the video to that bitrate (filler data), for tests that fill buffers.
    func publish(_ room: Room, seconds: Int, constantKbps: Int? = nil) -> Task<Tool.Run, any Error> {
        let rate = constantKbps.map { ["-b:v", "\($0)k", "-minrate", "\($0)k", "-maxrate", "\($0)k", "-bufsize", "\($0 / 4)k", "-x264-params", "nal-hrd=cbr"] } ?? []
        let args = ["-nostdin", "-loglevel", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "\(seconds)",
                    "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-pix_fmt", "yuv420p"] + rate + ["-c:a", "aac",
                    "-f", "flv", "\(room.pushServer)/\(room.streamKey)"]
        return Task { try await Tool.run("ffmpeg", args, timeout: Double(seconds) + 60) }
    }

    func waitUntilLive(_ client: RPCClient, _ room: Room) async throws {
        var g = GetRoomRequest()
        g.roomId = room.roomId
        for _ in 0..<500 {
            if try await client.unary(RoomService.getRoom, g).room?.status == .live { return }
            try await Task.sleep(for: .milliseconds(10))
        }
        XCTFail("the room never went live")
    }

    struct HTTPAnswer {
        var status: Int
        var body: String
    }

    func get(_ url: String, headers: [String] = [], maxTime: Int = 15) async throws -> HTTPAnswer {
        let r = try await Tool.run("curl", ["-s", "-m", "\(maxTime)", "-w", "\n%{http_code}"] + headers.flatMap { ["-H", $0] } + [url])
        var lines = r.stdout.components(separatedBy: "\n")
        let status = Int(lines.removeLast()) ?? 0
        return HTTPAnswer(status: status, body: lines.joined(separator: "\n"))
    }

    func viewers(_ client: RPCClient, _ room: Room) async throws -> [Viewer] {
        var r = ListViewersRequest()
        r.roomId = room.roomId
        return try await client.unary(AudienceService.listViewers, r).viewers
    }

    // MARK: the browser

    func browse(_ url: String, _ d: DaemonProcess, name: String) async throws -> [String: Any] {
        let shot = d.directory.appendingPathComponent("\(name).png").path
        let r = try await Tool.run("python3", [Self.repo.appendingPathComponent("tools/browser-play.py").path, url, shot, "30"], timeout: 120)
        XCTAssertEqual(r.status, 0, "the browser ran: \(r.stderr)")
        let line = r.stdout.split(separator: "\n").last.map(String.init) ?? "{}"
        return try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] ?? [:]
    }

    func testChromiumPlaysTheEmbeddedPlayerThroughMSEAndNativeHLSAndIsCountedByName() async throws {
        let hasBrowser = Tool.find("chromium") != nil && FileManager.default.fileExists(atPath: "/usr/bin/chromedriver")
        let selenium = try await Tool.run("python3", ["-c", "import selenium"])
        guard hasBrowser && selenium.status == 0 else {
            if ProcessInfo.processInfo.environment["CI"] != nil { XCTFail("chromium, chromium-driver or selenium is missing (tools/test installs them)") }
            throw XCTSkip("chromium, chromium-driver or selenium is missing; run tools/test")
        }
        let d = try await daemon()
        let client = try await d.connect(.unix)
        let room = try await createRoom(client, title: "Browser night")
        XCTAssertEqual(room.playUrl, "http://127.0.0.1:\(d.httpPort)/play/\(room.roomId)", "an embedded room's play URL is our player")
        let publisher = publish(room, seconds: 30)
        try await waitUntilLive(client, room)

        for (mode, viewer, name) in [("mse", "web-1", "Alice Browser"), ("hls", "web-2", "Bob Native")] {
            let t = try await token(client, room, viewer: viewer, name: name, phone: "555-0100")
            XCTAssertTrue(t.playUrl.hasPrefix(room.playUrl + "?t="), t.playUrl)
            let state = try await browse(t.playUrl + "&mode=\(mode)", d, name: mode)
            XCTAssertEqual(state["mode"] as? String, mode)
            XCTAssertGreaterThan(state["currentTime"] as? Double ?? 0, 3, "\(mode): the video plays past 3 s: \(state)")
            XCTAssertEqual(state["videoWidth"] as? Int, 640, "\(mode): decoded at the published size: \(state)")
            XCTAssertGreaterThan(state["colours"] as? Int ?? 0, 8, "\(mode): the picture is not blank: \(state)")
            XCTAssertGreaterThan(state["screenshotBytes"] as? Int ?? 0, 10_000, "\(mode): the screenshot shows the page")
            XCTAssertEqual(state["title"] as? String, "Browser night")
            XCTAssertEqual(state["status"] as? String, "live")
            let list = try await viewers(client, room)
            let seen = list.first { $0.viewerId == viewer }
            XCTAssertEqual(seen?.name, name, "\(mode): the browser viewer is in ListViewers by name: \(list.map(\.name))")
            XCTAssertEqual(seen?.phone, "555-0100")
        }
        let stats = try await client.unary(AudienceService.getRoomStats, { var r = GetRoomStatsRequest(); r.roomId = room.roomId; return r }())
        XCTAssertEqual(stats.viewers?.distinctViewers, 2)
        publisher.cancel()  // ffmpeg stops when the daemon does
        await client.close()
        try await d.stop()
    }

    // MARK: ffprobe and ffmpeg as players

    func testFFprobeReadsHTTPFLVMP4AndHLSWithThePublishedCodecsSizeAndDuration() async throws {
        let d = try await daemon()
        let client = try await d.connect(.unix)
        let room = try await createRoom(client)
        let t = try await token(client, room, viewer: "probe", name: "ffprobe")
        let publisher = publish(room, seconds: 6)
        try await waitUntilLive(client, room)
        // Recorded from the start (within the first group of pictures) until the stream ends.
        let files = ["flv": "flv", "mp4": "mp4"].mapValues { d.directory.appendingPathComponent("rec.\($0)").path }
        let recorders = files.map { (kind, file) in
            Task { try await Tool.run("ffmpeg", ["-nostdin", "-v", "error", "-i", kind == "flv" ? t.flvUrl : t.mp4Url, "-c", "copy", "-y", file], timeout: 60) }
        }
        try await Task.sleep(for: .seconds(3))
        let live = try await Tool.run("ffprobe", ["-v", "error", "-show_entries", "stream=codec_name,width,height", "-of", "csv=p=0", t.hlsUrl],
                                      timeout: 30)
        // (ffprobe lists an HLS stream's streams twice: once for the program.)
        XCTAssertEqual(Set(live.stdout.split(separator: "\n")), ["aac", "h264,640,360"], "ffprobe reads the live HLS playlist: \(live.stderr)")
        for r in recorders { let run = try await r.value; XCTAssertEqual(run.status, 0, run.stderr) }
        let published = try await publisher.value
        XCTAssertEqual(published.status, 0, published.stderr)
        for (kind, file) in files {
            let probe = try await Tool.probe(file)
            XCTAssertEqual(probe.streams, ["audio:aac", "video:h264"], kind)
            XCTAssertEqual(probe.duration, 6, accuracy: 0.6, "\(kind): the duration published")
            XCTAssertTrue(probe.decodeErrors.isEmpty, "\(kind) decodes cleanly: \(probe.decodeErrors)")
        }
        // The HLS window still holds the whole stream: its init segment and segments, in order, are the stream.
        let playlist = try await get(t.hlsUrl).body
        let base = t.hlsUrl.components(separatedBy: "index.m3u8")[0]
        var whole = Data()
        let map = try XCTUnwrap(playlist.components(separatedBy: "\n").first { $0.hasPrefix("#EXT-X-MAP:URI=") }, playlist)
        let uris = [String(map.dropFirst(16).dropLast())] + playlist.components(separatedBy: "\n").filter { $0.contains("seg-") && !$0.hasPrefix("#") }
        for uri in uris {
            let file = d.directory.appendingPathComponent("piece").path
            let r = try await Tool.run("curl", ["-s", "-f", "-o", file, base + uri])
            XCTAssertEqual(r.status, 0, uri)
            whole.append(try Data(contentsOf: URL(fileURLWithPath: file)))
        }
        let hlsFile = d.directory.appendingPathComponent("hls.mp4")
        try whole.write(to: hlsFile)
        let probe = try await Tool.probe(hlsFile.path)
        XCTAssertEqual(probe.streams, ["audio:aac", "video:h264"])
        XCTAssertEqual(probe.duration, 6, accuracy: 0.6, "hls: the duration published")
        await client.close()
        try await d.stop()
    }

    func testLLHLSPlaylistsAreContinuousAndABlockingReloadReturnsWhenThePartExists() async throws {
        let d = try await daemon()
        let client = try await d.connect(.unix)
        let room = try await createRoom(client, public: true)
        let publisher = publish(room, seconds: 12)
        try await waitUntilLive(client, room)
        let url = "http://127.0.0.1:\(d.httpPort)/live/\(room.roomId)/index.m3u8"
        let first = try await get(url)
        XCTAssertEqual(first.status, 200, "a public room plays without a token: \(first.body)")
        // Packaging began with the first request: a few seconds more make a window of segments and parts.
        try await Task.sleep(for: .seconds(5))
        let playlist = try await get(url)
        let lines = playlist.body.components(separatedBy: "\n")
        func value(_ tag: String) -> String? { lines.first { $0.hasPrefix(tag) }.map { String($0.dropFirst(tag.count)) } }
        let target = try XCTUnwrap(value("#EXT-X-TARGETDURATION:").flatMap(Double.init))
        let partTarget = try XCTUnwrap(value("#EXT-X-PART-INF:PART-TARGET=").flatMap(Double.init))
        XCTAssertEqual(partTarget, 0.5)
        XCTAssertTrue(lines.contains("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=1.500"))
        var msn = try XCTUnwrap(value("#EXT-X-MEDIA-SEQUENCE:").flatMap { Int($0) })
        var partIndex = 0
        var parts: [(Int, Int)] = []
        for line in lines {
            if line.hasPrefix("#EXT-X-PART:") {
                let duration = Double(line.components(separatedBy: "DURATION=")[1].components(separatedBy: ",")[0])!
                XCTAssertLessThanOrEqual(duration, partTarget, line)
                let uri = line.components(separatedBy: "URI=\"")[1].components(separatedBy: "\"")[0]
                XCTAssertTrue(uri.hasSuffix("part-\(msn).\(partIndex).m4s"), "parts are numbered in order: \(uri), expected \(msn).\(partIndex)")
                parts.append((msn, partIndex))
                partIndex += 1
            } else if line.hasPrefix("#EXTINF:") {
                XCTAssertLessThanOrEqual(Double(line.dropFirst(8).dropLast())!, target + 0.5, line)
            } else if line.contains("seg-") && !line.hasPrefix("#") {
                XCTAssertTrue(line.hasSuffix("seg-\(msn).m4s"), "segments are numbered in order: \(line), expected \(msn)")
                msn += 1
                partIndex = 0
            }
        }
        XCTAssertGreaterThan(parts.count, 3)
        let hint = try XCTUnwrap(lines.first { $0.hasPrefix("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=") })
        XCTAssertTrue(hint.hasSuffix("part-\(msn).\(partIndex).m4s\""), "the hint names the next part: \(hint)")

        // A blocking reload for the hinted part returns once it exists, and lists it.
        let started = ContinuousClock.now
        let blocked = try await get(url + "?_HLS_msn=\(msn)&_HLS_part=\(partIndex)")
        let waited = ContinuousClock.now - started
        XCTAssertEqual(blocked.status, 200)
        XCTAssertTrue(blocked.body.contains("part-\(msn).\(partIndex).m4s") || blocked.body.contains("seg-\(msn).m4s"), blocked.body)
        XCTAssertLessThan(waited, .seconds(3), "it waited for one part, not for a timeout")
        // The part itself is served; one far in the future is refused at once.
        let prefix = hint.components(separatedBy: "URI=\"")[1].components(separatedBy: "part-")[0]
        let part = try await Tool.run("curl", ["-s", "-f", "-o", "/dev/null", "-w", "%{size_download}",
                                               url.replacingOccurrences(of: "index.m3u8", with: "\(prefix)part-\(msn).\(partIndex).m4s")])
        XCTAssertEqual(part.status, 0)
        XCTAssertGreaterThan(Int(part.stdout) ?? 0, 1000)
        let ahead = try await get(url + "?_HLS_msn=\(msn + 50)&_HLS_part=0")
        XCTAssertEqual(ahead.status, 400, ahead.body)
        // The anonymous HLS viewer is online while its requests come.
        let list = try await viewers(client, room)
        XCTAssertEqual(list.count, 1)
        XCTAssertTrue(list.first?.viewerId.hasPrefix("anon-") ?? false)
        XCTAssertTrue(list.first?.online ?? false)
        publisher.cancel()  // ffmpeg stops when the daemon does
        await client.close()
        try await d.stop()
    }

    // MARK: a cache in front

    func testAnNginxCacheInFrontServesEachSegmentFromTheDaemonOnce() async throws {
        try XCTSkipUnless(FileManager.default.fileExists(atPath: NginxRTMP.binary), "nginx is not installed (tools/test installs it)")
        let d = try await daemon()
        let client = try await d.connect(.unix)
        let room = try await createRoom(client, public: true)
        // The sample config as shipped, pointed at this daemon, a free port and a temporary cache.
        let cacheDir = d.directory.appendingPathComponent("cache")
        let front = try NginxRTMP.freePort()
        let sample = try String(contentsOf: Self.repo.appendingPathComponent("tools/deploy/nginx-playback-cache.conf"), encoding: .utf8)
            .replacingOccurrences(of: "server 127.0.0.1:8080;", with: "server 127.0.0.1:\(d.httpPort);")
            .replacingOccurrences(of: "listen 80;", with: "listen 127.0.0.1:\(front);")
            .replacingOccurrences(of: "/var/cache/nginx/liveroom", with: cacheDir.path)
        let nginx = try NginxRTMP(directory: d.directory.appendingPathComponent("nginx"), http: sample)
        defer { nginx.stop() }
        let publisher = publish(room, seconds: 14)
        try await waitUntilLive(client, room)
        let url = "http://127.0.0.1:\(front)/live/\(room.roomId)/index.m3u8"
        _ = try await get(url)  // packaging begins
        try await Task.sleep(for: .seconds(4))
        // Two players through the cache, each reading the same segments.
        let players = (0..<2).map { _ in
            Task { try await Tool.run("ffmpeg", ["-nostdin", "-v", "error", "-live_start_index", "0", "-i", url, "-t", "5", "-c", "copy", "-f", "null", "-"],
                                      timeout: 60) }
        }
        for p in players { let r = try await p.value; XCTAssertEqual(r.status, 0, r.stderr) }
        let access = try String(contentsOf: nginx.directory.appendingPathComponent("access.log"), encoding: .utf8)
        let segments = access.components(separatedBy: "\n").compactMap { line -> String? in
            guard let r = line.range(of: #"GET /live/[^ ?]+seg-\d+\.m4s"#, options: .regularExpression) else { return nil }
            return String(line[r])
        }
        XCTAssertGreaterThanOrEqual(segments.count, 4, "both players read segments through nginx:\n\(access)")
        let distinct = Set(segments)
        XCTAssertLessThan(distinct.count, segments.count, "the players asked for the same segments")
        let metrics = try await get("http://127.0.0.1:\(d.metricsPort)/metrics")
        let served = metrics.body.components(separatedBy: "\n").first { $0.hasPrefix("liveroom_http_responses_total{kind=\"segment\"}") }
        XCTAssertEqual(served.flatMap { Int($0.split(separator: " ").last ?? "") }, distinct.count,
                       "the daemon served each segment once (\(distinct.count) distinct, \(segments.count) asked for)")
        publisher.cancel()
        await client.close()
        try await d.stop()
    }

    // MARK: bad input

    func testBadRequestsGetAClearAnswerAndTheDaemonServesEveryoneElse() async throws {
        let d = try await daemon("http_request_timeout_ms = 1000\n")
        let client = try await d.connect(.unix)
        let room = try await createRoom(client)
        let other = try await createRoom(client)
        let base = "http://127.0.0.1:\(d.httpPort)"
        let good = try await token(client, room, viewer: "v1", name: "V")

        let unknown = try await get("\(base)/live/rm_nosuchroom.flv")
        XCTAssertEqual(unknown.status, 404)
        XCTAssertTrue(unknown.body.contains("no room rm_nosuchroom"), unknown.body)
        for trick in ["/live/..%2F..%2Fetc%2Fpasswd.flv", "/live/a/b/c/d", "/play/..%2Fdata", "/live/%00.flv", "/live/\(room.roomId).exe",
                      "/live/\(room.roomId)/..%2F..%2Fmaster.key"] {
            let r = try await get(base + trick + "?t=\(good.token)")
            XCTAssertEqual(r.status, 404, "\(trick): \(r.body)")
        }
        let noToken = try await get("\(base)/live/\(room.roomId).mp4")
        XCTAssertEqual(noToken.status, 403)
        XCTAssertTrue(noToken.body.contains("private"), noToken.body)
        let badToken = try await get("\(base)/live/\(room.roomId)/index.m3u8?t=\(good.token.dropLast(3))abc")
        XCTAssertEqual(badToken.status, 403)
        XCTAssertTrue(badToken.body.contains("signature"), badToken.body)
        let wrongRoom = try await get("\(base)/live/\(other.roomId).flv?t=\(good.token)")
        XCTAssertEqual(wrongRoom.status, 403)
        XCTAssertTrue(wrongRoom.body.contains("for room \(room.roomId)"), wrongRoom.body)
        let notLive = try await get(good.flvUrl)
        XCTAssertEqual(notLive.status, 503, "nothing to play yet: \(notLive.body)")
        XCTAssertTrue(notLive.body.contains("not live"), notLive.body)

        // A token expires (the daemon's clock moved a day on).
        var advance = AdvanceClockRequest()
        advance.byMs = 25 * 3600 * 1000
        _ = try await client.unary(TestControl.advanceClock, advance)
        let expired = try await get(good.flvUrl)
        XCTAssertEqual(expired.status, 403)
        XCTAssertTrue(expired.body.contains("expired"), expired.body)

        // Oversized request headers: refused or closed, never served.
        let huge = try await get("\(base)/play/\(room.roomId)", headers: ["X-Big: " + String(repeating: "a", count: 100_000)])
        XCTAssertNotEqual(huge.status, 200)

        // A slowloris client is closed after the request timeout, while others are served.
        let slow = try RawTCP(port: d.httpPort)
        try slow.send("GET /play/\(room.roomId) HTTP/1.1\r\nHost: x\r\n")
        let meanwhile = try await get("\(base)/play/\(room.roomId)")
        XCTAssertEqual(meanwhile.status, 200)
        XCTAssertTrue(meanwhile.body.contains("<video"), "the player page")
        XCTAssertTrue(try slow.readsEndOfStream(within: 5), "the slow client was closed")

        // An ended room is gone.
        var close = CloseRoomRequest()
        close.roomId = room.roomId
        _ = try await client.unary(RoomService.closeRoom, close)
        let fresh = try await get("\(base)/live/\(room.roomId).flv")
        XCTAssertEqual(fresh.status, 410)
        XCTAssertTrue(fresh.body.contains("ended"), fresh.body)
        await client.close()
        try await d.stop()
    }

    func testASlowHTTPViewerIsDroppedWhileOthersPlayOn() async throws {
        let d = try await daemon("viewer_max_stall_ms = 1000\nviewer_queue_bytes = 65536\nviewer_max_skips = 1\n")
        let client = try await d.connect(.unix)
        let room = try await createRoom(client)
        let slowToken = try await token(client, room, viewer: "slow", name: "Slow Reader")
        let fine = try await token(client, room, viewer: "fine", name: "Fine Reader")
        let publisher = publish(room, seconds: 25, constantKbps: 8000)
        try await waitUntilLive(client, room)
        // Asks for the HTTP-FLV stream and never reads, with a tiny receive window.
        let slow = try RawTCP(port: d.httpPort, receiveBuffer: 4096)
        try slow.send("GET /live/\(room.roomId).flv?t=\(slowToken.token) HTTP/1.1\r\nHost: x\r\n\r\n")
        let probe = try await Tool.run("ffprobe", ["-v", "error", "-show_entries", "stream=codec_name", "-of", "csv=p=0", fine.flvUrl], timeout: 30)
        XCTAssertEqual(Set(probe.stdout.split(separator: "\n")), ["aac", "h264"], "another viewer plays meanwhile: \(probe.stderr)")
        // 8 Mbit/s fills the sockets' buffers within seconds; then the viewer's queue stalls and it is dropped.
        try await Task.sleep(for: .seconds(10))
        XCTAssertTrue(try slow.readsEndOfStream(within: 5), "the daemon closed the viewer that stopped reading")
        let list = try await viewers(client, room)
        let slowViewer = list.first { $0.viewerId == "slow" }
        XCTAssertEqual(slowViewer?.name, "Slow Reader")
        XCTAssertEqual(slowViewer?.online, false, "the dropped viewer is offline in the statistics")
        XCTAssertEqual(slowViewer?.timesLeft, 1)
        publisher.cancel()
        await client.close()
        try await d.stop()
    }

    func testAStreamWeCannotRemuxStillPlaysOverWatchAndAnswers415ForMP4AndHLS() async throws {
        let d = try await daemon()
        let client = try await d.connect(.unix)
        let room = try await createRoom(client, public: true)
        // Bytes that are neither FLV nor MPEG-TS, published over StreamData, slowly enough to stay live.
        let noise = d.directory.appendingPathComponent("noise.bin")
        try Data((0..<400_000).map { UInt8(truncatingIfNeeded: $0 &* 7919 &+ 13) }).write(to: noise)
        let publisher = Task {
            try await Tool.run(DaemonProcess.binDirectory.appendingPathComponent("liveroomctl").path,
                               ["publish", "--socket", d.socketPath, room.roomId, "--key", room.streamKey, noise.path, "--rate", "400"])
        }
        try await waitUntilLive(client, room)
        let base = "http://127.0.0.1:\(d.httpPort)/live/\(room.roomId)"
        for url in [base + ".mp4", base + "/index.m3u8"] {
            let r = try await get(url)
            XCTAssertEqual(r.status, 415, "\(url): \(r.body)")
            XCTAssertTrue(r.body.contains("neither FLV nor MPEG-TS"), r.body)
        }
        let flv = try await get(base + ".flv")
        XCTAssertEqual(flv.status, 415)
        XCTAssertTrue(flv.body.contains("not publishing FLV"), flv.body)
        // Watch still carries it.
        var w = WatchRequest()
        w.roomId = room.roomId
        w.viewerId = "watcher"
        let watch = try await client.serverStreaming(MediaService.watch, w)
        let stop = Task {
            try await Task.sleep(for: .seconds(20))
            watch.cancel()
        }
        var bytes = 0
        for try await m in watch.responses {
            if case .chunk(let c)? = m.message { bytes += c.payload.readableBytes }
            if bytes > 10_000 { break }
        }
        stop.cancel()
        watch.cancel()
        XCTAssertGreaterThan(bytes, 10_000)
        publisher.cancel()
        await client.close()
        try await d.stop()
    }

    func testMPEGTSPublishedOverStreamDataPlaysAsMP4() async throws {
        let d = try await daemon()
        let client = try await d.connect(.unix)
        let room = try await createRoom(client, public: true)
        let ts = d.directory.appendingPathComponent("in.ts").path
        let made = try await Tool.run("ffmpeg", ["-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25", "-f", "lavfi",
                                                 "-i", "sine=frequency=440:sample_rate=44100", "-t", "8", "-c:v", "libx264", "-preset", "ultrafast",
                                                 "-g", "25", "-pix_fmt", "yuv420p", "-c:a", "aac", "-f", "mpegts", ts])
        XCTAssertEqual(made.status, 0, made.stderr)
        let size = try FileManager.default.attributesOfItem(atPath: ts)[.size] as! Int
        let publisher = Task {
            try await Tool.run(DaemonProcess.binDirectory.appendingPathComponent("liveroomctl").path,
                               ["publish", "--socket", d.socketPath, room.roomId, "--key", room.streamKey, ts,
                                "--rate", "\(size * 8 / 1000 / 8)", "--chunk-size", "4096"])
        }
        try await waitUntilLive(client, room)
        let r = try await Tool.run("ffprobe", ["-v", "error", "-show_entries", "stream=codec_name,width,height", "-of", "csv=p=0",
                                               "http://127.0.0.1:\(d.httpPort)/live/\(room.roomId).mp4"], timeout: 30)
        XCTAssertEqual(r.stdout.split(separator: "\n").sorted(), ["aac", "h264,640,360"], "MPEG-TS remuxed to MP4: \(r.stderr)")
        publisher.cancel()
        await client.close()
        try await d.stop()
    }
}

/// A raw TCP client, to be a slow or broken HTTP peer.
final class RawTCP {
    private let fd: Int32

    init(port: Int, receiveBuffer: Int32? = nil) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        if var size = receiveBuffer { setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size)) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let r = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard r == 0 else { throw POSIXError(.ECONNREFUSED) }
    }

    deinit { close(fd) }

    func send(_ text: String) throws {
        let n = text.utf8CString.withUnsafeBufferPointer { write(fd, $0.baseAddress, $0.count - 1) }
        guard n >= 0 else { throw POSIXError(.EPIPE) }
    }

    /// Whether the server closes the connection within `seconds` (reading whatever it sends first).
    func readsEndOfStream(within seconds: Int) throws -> Bool {
        var timeout = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n == 0 { return true }
            if n < 0 { return errno == ECONNRESET }
        }
    }
}
