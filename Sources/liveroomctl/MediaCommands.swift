import ArgumentParser
import Foundation
import LiveRoomClient
import LiveRoomMessages
import LiveRoomRPC
import NIOCore

struct PublishCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "publish",
        abstract: "Publish a file or stdin (FLV, MPEG-TS or anything) into a room.",
        discussion: "Keyframes are marked where the container shows them (FLV video tags, MPEG-TS random access points), else every chunk.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Room id.") var id: String
    @Option(help: "The room's stream key.") var key: String
    @Argument(help: "File to publish; '-' or nothing: stdin.") var file: String?
    @Option(help: "Pace to this many kilobits per second (default: as fast as possible).") var rate: Double?
    @Option(name: .customLong("chunk-size"), help: "Bytes per chunk (MPEG-TS is cut at 188-byte packets).") var chunkSize = 32 * 1024

    func run() async throws {
        try await reportingErrors {
            let input: FileHandle
            if let file, file != "-" {
                guard let h = FileHandle(forReadingAtPath: file) else { throw ValidationError("cannot read \(file)") }
                input = h
            } else {
                input = .standardInput
            }
            let client = try await global.connection.connect()
            defer { Task { await client.close() } }
            let call = try await client.startPublishing(roomId: id, streamKey: key, publisherId: "liveroomctl")
            var chunker = MediaChunker(chunkSize: max(1024, chunkSize))
            let began = ContinuousClock.now
            var sent = 0
            var sequence: UInt64 = 0
            func send(_ pieces: [MediaChunker.Piece]) async throws {
                for p in pieces {
                    var c = MediaChunk()
                    c.sequence = sequence
                    sequence += 1
                    c.timestampMs = Int64((ContinuousClock.now - began).components.seconds * 1000)
                    c.keyframe = p.keyframe
                    c.header = p.header
                    c.payload = ByteBuffer(bytes: p.bytes)
                    var m = StreamDataRequest()
                    m.message = .chunk(c)
                    try await call.send(m)
                    sent += p.bytes.count
                    if let rate {
                        let due = Duration.seconds(Double(sent * 8) / (rate * 1000))
                        let ahead = due - (ContinuousClock.now - began)
                        if ahead > .zero { try await Task.sleep(for: ahead) }
                    }
                }
            }
            while true {
                let data = input.readData(ofLength: 64 * 1024)
                if data.isEmpty { break }
                try await send(chunker.feed(Array(data)))
            }
            try await send(chunker.flush())
            let summary = try await call.finish()
            FileHandle.standardError.write(Data("published \(summary.chunksReceived) chunks, \(summary.bytesReceived) bytes\n".utf8))
        }
    }
}

struct WatchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "watch", abstract: "Watch a room: the stream goes to stdout (| ffplay -), events to stderr.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Room id.") var id: String
    @Option(help: "Viewer id.") var viewer: String
    @Option(help: "Viewer's name.") var name = ""
    @Option(help: "Viewer's phone.") var phone = ""
    @Flag(name: .customLong("until-end"), help: "Stop when the publisher ends.") var untilEnd = false

    func run() async throws {
        try await reportingErrors {
            let client = try await global.connection.connect()
            defer { Task { await client.close() } }
            var r = WatchRequest()
            r.roomId = id
            r.viewerId = viewer
            r.name = name
            r.phone = phone
            let call = try await client.serverStreaming(MediaService.watch, r, timeout: global.deadline)
            for try await m in call.responses {
                switch m.message {
                case .chunk(let c)?:
                    FileHandle.standardOutput.write(Data(c.payload.readableBytesView))
                case .event(let e)?:
                    FileHandle.standardError.write(Data("liveroomctl: \(shortName(e.kind, "STREAM_EVENT_KIND_"))\n".utf8))
                    if e.kind == .closed || (untilEnd && e.kind == .ended) { return }
                case nil:
                    break
                }
            }
        }
    }
}

struct ViewersCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "viewers", abstract: "Our viewers of a room, like an audience list.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Room id.") var id: String
    @Flag(name: .customLong("online"), help: "Only viewers online now.") var online = false
    @Option(name: .customLong("page-size")) var pageSize: Int32 = 0
    @Option(name: .customLong("page-token")) var pageToken = ""

    func run() async throws {
        var r = ListViewersRequest()
        r.roomId = id
        r.onlineOnly = online
        r.pageSize = pageSize
        r.pageToken = pageToken
        try await callAndPrint(global, AudienceService.listViewers, r) { response in
            table(["VIEWER", "NAME", "PHONE", "ONLINE", "FIRST ENTRY", "LAST LEAVE", "TIMES LEFT", "MINUTES WATCHED"], response.viewers.map { v in
                [v.viewerId, v.name, v.phone, v.online ? "yes" : "no", time(v.firstEntryAtMs), time(v.lastLeaveAtMs), "\(v.timesLeft)",
                 String(format: "%.1f", Double(v.watchMs) / 60_000)]
            }) + (response.nextPageToken.isEmpty ? "" : "\nnext page: --page-token \(response.nextPageToken)")
        }
    }
}

struct StatsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "stats", abstract: "A room's audience: ours and each platform's.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Room id.") var id: String

    func run() async throws {
        var r = GetRoomStatsRequest()
        r.roomId = id
        try await callAndPrint(global, AudienceService.getRoomStats, r) { s in
            let v = s.viewers ?? ViewerStats()
            var out = """
                our viewers   online now \(v.onlineNow), distinct \(v.distinctViewers), peak \(v.peakConcurrent), \
                watched \(String(format: "%.1f", Double(v.totalWatchMs) / 60_000)) min
                """
            if !s.platforms.isEmpty {
                out += "\n" + table(["PLATFORM", "ONLINE", "PEAK", "NEW VIEWERS", "COMMENTS", "LIKES", "INTERACTIONS", "GIFTS", "ITEMS SOLD", "SALES"],
                    s.platforms.map { p in
                        [p.platformId, "\(p.viewersOnline)", "\(p.peakViewersOnline)", "\(p.newViewers)", "\(p.comments)", "\(p.likes)",
                         "\(p.interactions)", "\(p.gifts)", "\(p.itemsSold)",
                         p.sales.map { String(format: "%.2f %@", Double($0.minorUnits) / 100, $0.currency) } ?? "-"]
                    })
            }
            out += "\ncombined reach \(s.combinedReach), online now across platforms \(s.combinedOnline)"
            return out
        }
    }
}

struct ViewerTokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "viewer-token",
        abstract: "Issue a token that lets one viewer play a room over HTTP, with the URLs that carry it.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Room id.") var id: String
    @Option(help: "The viewer's id (as in the statistics).") var viewer: String
    @Option(help: "The viewer's name.") var name = ""
    @Option(help: "The viewer's phone.") var phone = ""
    @Option(help: "Lifetime in seconds (default 24 hours; at most 30 days).") var ttl: Int64 = 0

    func run() async throws {
        var r = IssueViewerTokenRequest()
        r.roomId = id
        r.viewerId = viewer
        r.name = name
        r.phone = phone
        r.ttlSeconds = ttl
        try await callAndPrint(global, MediaService.issueViewerToken, r) { t in
            [("token", t.token), ("expires", time(t.expiresAtMs)), ("player", t.playUrl), ("http-flv", t.flvUrl), ("mp4", t.mp4Url),
             ("hls", t.hlsUrl)].map { "\($0.0.padding(toLength: 9, withPad: " ", startingAt: 0)) \($0.1)" }.joined(separator: "\n")
        }
    }
}
