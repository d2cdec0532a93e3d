import CoreMetrics
import Crypto
import Foundation
import Hummingbird
import HummingbirdCore
import LiveRoomDomain
import LiveRoomMessages
import LiveRoomPlayback
import Logging
import NIOCore
import Synchronization

/// A request's context: the router's, plus the connection (to end a stream for a viewer the
/// room dropped, and to tell who an anonymous viewer is).
struct PlaybackContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let channel: any Channel

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }
}

/// Where players reach us, known once the HTTP listener is bound (or configured).
public final class PlaybackURLs: Sendable {
    private let base = Mutex<String?>(nil)
    public init() {}
    public var baseURL: String? { base.withLock { $0 } }
    func set(_ url: String) { base.withLock { $0 = url } }
}

/// The HTTP listener for players: HTTP-FLV, one continuous fragmented MP4, LL-HLS and the
/// embedded web player, for every room; viewers are counted like Watch viewers.
public final class PlaybackServer: Sendable {
    public struct Settings: Sendable {
        public var host = "127.0.0.1"
        public var port = 8080
        /// Players' view of our address; nil: the listener's own.
        public var publicURL: String?
        public var segmentTargetMs = 2000
        public var partTargetMs = 500
        public var viewerQueue = ViewerQueue.Limits()
        /// Time a client may take to send a whole request.
        public var requestTimeout = TimeAmount.seconds(10)
        /// How long writes to a player of a live room may wait to go out together (viewer_merge_ms).
        public var merge: Duration? = .milliseconds(50)
        public init() {}
    }

    let registry: RoomRegistry
    let tokens: ViewerTokens
    let settings: Settings
    let urls: PlaybackURLs
    let packaged: PackagedRooms
    let logger: Logger
    private let responses: @Sendable (String) -> CoreMetrics.Counter

    public init(registry: RoomRegistry, tokens: ViewerTokens, settings: Settings, urls: PlaybackURLs, factory: any MetricsFactory,
                logger: Logger) {
        self.registry = registry
        self.tokens = tokens
        self.settings = settings
        self.urls = urls
        self.logger = logger
        var packaging = PackagedRoom.Settings()
        packaging.packager.segmentTarget = Double(settings.segmentTargetMs) / 1000
        packaging.packager.partTarget = Double(settings.partTargetMs) / 1000
        packaging.viewerQueue = settings.viewerQueue
        self.packaged = PackagedRooms(settings: packaging, now: { [registry] in registry.now })
        let counters = ["flv", "mp4", "playlist", "init", "segment", "part", "player", "info"].map {
            ($0, CoreMetrics.Counter(label: "liveroom_http_responses_total", dimensions: [("kind", $0)], factory: factory))
        }
        let byKind = Dictionary(uniqueKeysWithValues: counters)
        responses = { byKind[$0]! }
    }

    /// The Hummingbird application, a service for the daemon's ServiceGroup; `onBound` gets the port.
    public func application(onBound: @escaping @Sendable (Int) async -> Void) -> some ApplicationProtocol {
        let router = Router(context: PlaybackContext.self)
        router.get("/play/:room") { request, context in try await self.player(request, context) }
        // One route: Hummingbird's router would take `/live/:file` and `/live/:room/:file` for one.
        router.get("/live/**") { request, context in
            let path = context.parameters.getCatchAll()
            switch path.count {
            case 1: return try await self.live(String(path[0]), request, context)
            case 2: return try await self.hls(path[0], String(path[1]), request, context)
            default: throw HTTPError(.notFound, message: "no such stream: ask for /live/ROOM.flv, /live/ROOM.mp4 or /live/ROOM/index.m3u8")
            }
        }
        var http = HTTP1Channel.Configuration(idleTimeout: settings.requestTimeout)
        http.httpDecoder = .init(maxHeaderFieldSize: 16 * 1024, maxHeaderListSize: 32 * 1024, maxHeaderFieldCount: 100)
        return Application(
            router: router,
            server: .http1(configuration: http),
            configuration: .init(address: .hostname(settings.host, port: settings.port), serverName: "liveroomd"),
            onServerRunning: { channel in await onBound(channel.localAddress?.port ?? 0) },
            logger: logger)
    }

    public func shutDown() async { await packaged.shutDown() }

    // MARK: access

    /// Who is asking to play, once the room and the token check out.
    struct Viewer {
        let room: RoomActor
        let record: RoomRecord
        let id: String
        let name: String
        let phone: String
        /// The token to hand on in the URLs we give out ("" for a public room without one).
        let token: String
    }

    static func validRoomId(_ id: Substring) -> Bool {
        !id.isEmpty && id.count <= 64 && id.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") }
    }

    func viewer(_ roomId: Substring, _ request: Request, _ context: PlaybackContext) async throws -> Viewer {
        guard Self.validRoomId(roomId) else { throw HTTPError(.notFound, message: "no such room") }
        let id = String(roomId)
        let room: RoomActor
        do { room = try await registry.room(id) } catch let error as RoomError where error.code == .notFound {
            throw HTTPError(.notFound, message: "no room \(id)")
        }
        let record = await room.snapshot()
        guard record.status != .ended else { throw HTTPError(.gone, message: "room \(id) has ended") }
        if let token = request.uri.queryParameters.get("t") {
            do {
                let claims = try tokens.verify(token, room: id, nowMs: registry.now)
                return Viewer(room: room, record: record, id: claims.viewer, name: claims.name, phone: claims.phone, token: token)
            } catch let refusal as ViewerTokens.Refusal {
                throw HTTPError(.forbidden, message: refusal.description)
            }
        }
        guard record.publicPlayback else {
            throw HTTPError(.forbidden, message: "room \(id) is private: play it with a viewer token (?t=TOKEN from MediaService.IssueViewerToken)")
        }
        return Viewer(room: room, record: record, id: anonymousId(request, context), name: "", phone: "", token: "")
    }

    /// The same anonymous viewer across an HLS player's many requests: address and user agent.
    func anonymousId(_ request: Request, _ context: PlaybackContext) -> String {
        let who = "\(context.channel.remoteAddress?.ipAddress ?? "")|\(request.headers[.userAgent] ?? "")"
        return "anon-" + SHA256.hash(data: Data(who.utf8)).prefix(6).map { String(format: "%02x", $0) }.joined()
    }

    static func query(_ v: Viewer) -> String {
        v.token.isEmpty ? "" : "t=" + (v.token.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-_."))) ?? "")
    }

    // MARK: routes

    func player(_ request: Request, _ context: PlaybackContext) async throws -> Response {
        let roomId = context.parameters.get("room") ?? ""
        guard Self.validRoomId(Substring(roomId)) else { throw HTTPError(.notFound, message: "no such room") }
        do { _ = try await registry.room(roomId) } catch let error as RoomError where error.code == .notFound {
            throw HTTPError(.notFound, message: "no room \(roomId)")
        }
        responses("player").increment()
        var headers = HTTPFields()
        headers[.contentType] = "text/html; charset=utf-8"
        headers[.cacheControl] = "no-cache"
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: PlayerPage.html)))
    }

    /// `/live/ROOM.flv`, `/live/ROOM.mp4`, `/live/ROOM.json`.
    func live(_ file: String, _ request: Request, _ context: PlaybackContext) async throws -> Response {
        guard let dot = file.lastIndex(of: ".") else { throw HTTPError(.notFound, message: "no such stream: ask for ROOM.flv, ROOM.mp4 or ROOM/index.m3u8") }
        let v = try await viewer(file[..<dot], request, context)
        switch file[file.index(after: dot)...] {
        case "flv": return try await flv(v, context)
        case "mp4": return try await mp4(v, context)
        case "json": return try await info(v)
        default: throw HTTPError(.notFound, message: "no such stream: ask for ROOM.flv, ROOM.mp4 or ROOM/index.m3u8")
        }
    }

    static func headers(_ contentType: String, cache: String = "no-cache") -> HTTPFields {
        var h = HTTPFields()
        h[.contentType] = contentType
        h[.cacheControl] = cache
        h[.accessControlAllowOrigin] = "*"
        return h
    }

    func notLive(_ v: Viewer) -> HTTPError {
        var h = HTTPFields()
        h[.retryAfter] = "2"
        return HTTPError(.serviceUnavailable, headers: h, message: "room \(v.record.id) is not live now; try again when it is")
    }

    /// Room status, for the player page.
    func info(_ v: Viewer) async throws -> Response {
        responses("info").increment()
        var o: [String: Any] = ["room_id": v.record.id, "title": v.record.title,
                                "status": v.record.status == .live ? "live" : "not_started"]
        if v.record.status == .live {
            let p = try await packaged.packaging(v.room)
            await p.awaitMedia(timeoutMs: 3000)
            if let reason = await p.unsupported {
                o["unsupported"] = reason
            } else if await p.hasMedia {
                o["mime"] = await p.packager.tracks.mimeType
            }
        }
        let json = try JSONSerialization.data(withJSONObject: o, options: [.sortedKeys])
        return Response(status: .ok, headers: Self.headers("application/json"), body: .init(byteBuffer: ByteBuffer(bytes: json)))
    }

    /// HTTP-FLV: the room's own FLV stream, from its header and current group of pictures.
    func flv(_ v: Viewer, _ context: PlaybackContext) async throws -> Response {
        guard await v.room.isPublishing else { throw notLive(v) }
        let channel = context.channel
        let (token, queue) = try await v.room.join(viewerId: v.id, name: v.name, phone: v.phone) { _ in channel.close(promise: nil) }
        // Only FLV can be served as FLV; another container is refused before any byte goes.
        let reader = QueueReader(queue)
        guard case .item(.chunk(let first)) = await reader.next(), first.payload.getBytes(at: first.payload.readerIndex, length: 3) == Array("FLV".utf8)
        else {
            await v.room.leave(token)
            throw HTTPError(.unsupportedMediaType, message: "room \(v.record.id) is not publishing FLV: play it as MP4 or HLS, or over Watch")
        }
        responses("flv").increment()
        let room = v.room
        let merge = v.record.kind == .live ? settings.merge : nil
        return Response(status: .ok, headers: Self.headers("video/x-flv", cache: "no-store"), body: .init { writer in
            defer { Task { await room.leave(token) } }
            try await writer.write(first.payload)
            try await Self.stream(reader, to: &writer, endOnStreamEnd: true, merge: merge)
            try await writer.finish(nil)
        })
    }

    /// One continuous fragmented MP4 stream, for Media Source Extensions.
    func mp4(_ v: Viewer, _ context: PlaybackContext) async throws -> Response {
        guard await v.room.isPublishing else { throw notLive(v) }
        let p = try await packaged.packaging(v.room)
        let channel = context.channel
        await p.awaitMedia()
        let subscription = await p.subscribe { _ in channel.close(promise: nil) }
        if let reason = await p.unsupported { throw HTTPError(.unsupportedMediaType, message: reason) }
        guard let (token, queue) = subscription else { throw notLive(v) }
        let room = v.room
        let presence: Int
        do {
            presence = try await room.enter(viewerId: v.id, name: v.name, phone: v.phone) { channel.close(promise: nil) }
        } catch {
            await p.unsubscribe(token)
            throw error
        }
        responses("mp4").increment()
        let mime = await p.packager.tracks.mimeType
        let merge = v.record.kind == .live ? settings.merge : nil
        return Response(status: .ok, headers: Self.headers(mime, cache: "no-store"), body: .init { writer in
            defer {
                Task {
                    await p.unsubscribe(token)
                    await room.leave(presence)
                }
            }
            try await Self.stream(QueueReader(queue), to: &writer, endOnStreamEnd: false, merge: merge)
            try await writer.finish(nil)
        })
    }

    /// Whether an FLV response ends at this event: the stream ended, or a new one began.
    static func endsStream(_ e: StreamEvent) -> Bool { e.kind == .ended || e.kind == .closed || e.kind == .started }

    /// Writes a viewer queue's chunks, several at a time when they have piled up.
    static func stream(_ reader: QueueReader, to writer: inout any ResponseBodyWriter, endOnStreamEnd: Bool,
                       merge: Duration?) async throws {
        while true {
            switch await reader.next() {
            case .item(.chunk(let c)):
                // Live players buffer seconds: a moment's wait lets several chunks go in one write.
                if let merge { try? await Task.sleep(for: merge) }
                var batch = [c.payload]
                var ended = false
                drain: while batch.count < 64 {
                    switch reader.queue.poll() {
                    case .item(.chunk(let more)): batch.append(more.payload)
                    case .item(.event(let e)):
                        if endOnStreamEnd && Self.endsStream(e) { ended = true }
                        break drain
                    case .empty: break drain
                    case .finished: ended = true; break drain
                    }
                }
                try await writer.write(contentsOf: batch)
                if ended { return }
            case .item(.event(let e)):
                // An FLV stream cannot start over inside one response: the player reconnects.
                if endOnStreamEnd && Self.endsStream(e) { return }
            case .empty: continue
            case .finished: return
            }
        }
    }

    // MARK: LL-HLS

    /// `/live/ROOM/index.m3u8` and what it lists: `STAMP-init-G.mp4`, `STAMP-seg-MSN.m4s`,
    /// `STAMP-part-MSN.INDEX.m4s`.
    func hls(_ roomId: Substring, _ file: String, _ request: Request, _ context: PlaybackContext) async throws -> Response {
        let v = try await viewer(roomId, request, context)
        if file == "index.m3u8" { return try await playlist(v, request) }
        let p = try await packaged.packaging(v.room)
        await p.used()
        let prefix = p.stamp + "-"
        guard file.hasPrefix(prefix) else { throw HTTPError(.notFound, message: "\(file) is not in this room's playlist any more: reload the playlist") }
        let name = file.dropFirst(prefix.count)
        let packager = await p.packager
        let cache = "public, max-age=60, immutable"
        if name.hasPrefix("init-"), name.hasSuffix(".mp4"), let g = Int(name.dropFirst(5).dropLast(4)), let data = packager.inits[g] {
            responses("init").increment()
            return Response(status: .ok, headers: Self.headers("video/mp4", cache: cache), body: .init(byteBuffer: data))
        }
        if name.hasPrefix("seg-"), name.hasSuffix(".m4s"), let msn = Int(name.dropFirst(4).dropLast(4)),
           let s = packager.segment(msn), s.complete {
            try await p.touch(viewerId: v.id, name: v.name, phone: v.phone)
            responses("segment").increment()
            return Response(status: .ok, headers: Self.headers("video/iso.segment", cache: cache), body: .init(contentsOf: s.parts.map(\.data)))
        }
        if name.hasPrefix("part-"), name.hasSuffix(".m4s") {
            let numbers = name.dropFirst(5).dropLast(4).split(separator: ".")
            if numbers.count == 2, let msn = Int(numbers[0]), let index = Int(numbers[1]) {
                // The preload hint names the part to come: the request waits for it.
                let next = packager.nextPart
                if msn == next.msn && index == next.index || msn == next.msn + 1 && index == 0 {
                    _ = await p.waitFor(msn: msn, part: index, timeoutMs: Int64(settings.partTargetMs) * 3 + 1000)
                }
                if let part = await p.packager.segment(msn)?.parts.first(where: { $0.index == index }) {
                    try await p.touch(viewerId: v.id, name: v.name, phone: v.phone)
                    responses("part").increment()
                    return Response(status: .ok, headers: Self.headers("video/iso.segment", cache: cache), body: .init(byteBuffer: part.data))
                }
            }
        }
        throw HTTPError(.notFound, message: "\(file) is not in this room's playlist (any more): reload the playlist")
    }

    func playlist(_ v: Viewer, _ request: Request) async throws -> Response {
        let p = try await packaged.packaging(v.room)
        let q = request.uri.queryParameters
        if let msnText = q.get("_HLS_msn") {
            guard let msn = Int(msnText), msn >= 0 else { throw HTTPError(.badRequest, message: "_HLS_msn must be a segment number") }
            var part: Int?
            if let partText = q.get("_HLS_part") {
                guard let n = Int(partText), n >= 0 else { throw HTTPError(.badRequest, message: "_HLS_part must be a part number") }
                part = n
            }
            let next = await p.packager.nextPart.msn
            guard msn <= next + 1 else { throw HTTPError(.badRequest, message: "_HLS_msn \(msn) is too far ahead: the next segment is \(next)") }
            // At most three target durations, as the spec asks; then the playlist as it is.
            _ = await p.waitFor(msn: msn, part: part, timeoutMs: Int64(await p.packager.targetDuration) * 3000)
        } else if q.get("_HLS_part") != nil {
            throw HTTPError(.badRequest, message: "_HLS_part needs _HLS_msn")
        }
        if await v.room.isPublishing { await p.awaitMedia() }
        if let reason = await p.unsupported { throw HTTPError(.unsupportedMediaType, message: reason) }
        guard await p.hasMedia else { throw notLive(v) }
        try await p.touch(viewerId: v.id, name: v.name, phone: v.phone)
        let text = HLSPlaylist.render(await p.packager, query: Self.query(v), prefix: p.stamp + "-")
        responses("playlist").increment()
        return Response(status: .ok, headers: Self.headers("application/vnd.apple.mpegurl"), body: .init(byteBuffer: ByteBuffer(string: text)))
    }
}
