import CoreMetrics
import LiveRoomDomain
import LiveRoomMessages
import LiveRoomPlayback
import NIOCore

/// One room's stream packaged for HTTP players (fragmented MP4 and LL-HLS), made while they
/// ask for it: it reads the room like a relay does (an output, not a viewer), remuxes once for
/// everyone, feeds MP4-stream players through bounded queues, answers blocking playlist
/// reloads, and keeps HLS players' viewing sessions (HLS has no connection to watch).
actor PackagedRoom {
    struct Settings: Sendable {
        var packager = Packager.Settings()
        var viewerQueue = ViewerQueue.Limits()
        /// A packaging nobody asked for this long is let go.
        var idleMs: Int64 = 60_000
    }

    nonisolated let roomId: String
    /// Names this packaging's segments, so that a cache never mixes them up with another's
    /// (after a restart, segment numbers begin again).
    nonisolated let stamp: String
    private let room: RoomActor
    private let settings: Settings
    private let now: @Sendable () -> Int64
    private(set) var packager: Packager
    private var demuxer = StreamDemuxer()
    /// Why this stream cannot be packaged (415 to players), if so.
    private(set) var unsupported: String?
    private var subscribers: [Int: ViewerQueue] = [:]
    private var nextToken = 0
    private var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
    private var sessions: [String: Session] = [:]
    private var lastUsedMs: Int64
    private var output: Int?
    private var tasks: [Task<Void, Never>] = []
    private(set) var closed = false

    struct Session {
        var token: Int?
        var lastSeenMs: Int64
    }

    init(room: RoomActor, settings: Settings, now: @escaping @Sendable () -> Int64) {
        self.roomId = room.id
        self.room = room
        self.settings = settings
        self.now = now
        self.packager = Packager(settings: settings.packager)
        self.lastUsedMs = now()
        self.stamp = String(UInt64.random(in: 0..<(1 << 40)), radix: 36)
    }

    /// Attaches to the room; `onGone` is called once when this packaging ends (room closed, or
    /// idle), for whoever keeps it to forget it.
    func start(onGone: @escaping @Sendable () -> Void) async throws {
        let (token, queue) = try await room.attachOutput(limits: settings.viewerQueue)
        output = token
        let reader = QueueReader(queue)
        tasks.append(Task { [weak self] in
            while let self {
                switch await reader.next() {
                case .item(let item): await self.ingest(item)
                case .empty: continue
                case .finished:
                    await self.shutDown()
                    onGone()
                    return
                }
            }
        })
        tasks.append(Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                guard let self, await self.sweep() else { break }
            }
            await self?.shutDown()
            onGone()
        })
    }

    func shutDown() async {
        guard !closed else { return }
        closed = true
        for t in tasks { t.cancel() }
        if let output { await room.leave(output) }
        for q in subscribers.values { q.finish(nil) }
        subscribers = [:]
        for s in sessions.values { if let t = s.token { await room.leave(t) } }
        sessions = [:]
        wakeWaiters()
    }

    // MARK: the stream

    private func ingest(_ item: ViewerItem) {
        switch item {
        case .chunk(let chunk):
            guard unsupported == nil else { return }
            do {
                apply(packager.feed(try demuxer.feed(chunk.payload)))
            } catch {
                unsupported = (error as? UnsupportedMedia)?.reason ?? "\(error)"
                for q in subscribers.values { q.finish(RoomError(.failedPrecondition, unsupported!)) }
                subscribers = [:]
                wakeWaiters()
            }
        case .event(let e):
            switch e.kind {
            case .started:
                demuxer = StreamDemuxer()
                unsupported = nil
                apply(packager.feed([.streamStart]))
            case .ended, .closed:
                apply(packager.feed(demuxer.flush()))
                apply(packager.finish())
                // MP4 players see the stream end and reconnect for the next one.
                for q in subscribers.values { q.finish(nil) }
                subscribers = [:]
            default:
                break
            }
        }
    }

    private func apply(_ outputs: [Packager.Output]) {
        guard !outputs.isEmpty else { return }
        let at = now()
        for o in outputs {
            switch o {
            case .initSegment(_, let data):
                for q in subscribers.values { q.offer(Self.chunk(data, keyframe: false, header: true), nowMs: at) }
            case .part(let part):
                for q in subscribers.values { q.offer(Self.chunk(part.data, keyframe: part.independent, header: false), nowMs: at) }
            case .segmentComplete:
                break
            }
        }
        wakeWaiters()
    }

    static func chunk(_ data: ByteBuffer, keyframe: Bool, header: Bool) -> MediaChunk {
        var c = MediaChunk()
        c.payload = data
        c.keyframe = keyframe
        c.header = header
        return c
    }

    // MARK: players

    /// Whether there is anything to play: an init segment and at least one part.
    var hasMedia: Bool { packager.inits[packager.generation] != nil && !packager.segments.isEmpty }

    /// Waits for the first part when there is nothing yet: a packaging that just attached needs
    /// the current group of pictures first.
    func awaitMedia(timeoutMs: Int64 = 5000) async {
        if !hasMedia && unsupported == nil { _ = await waitFor(msn: 0, part: 0, timeoutMs: timeoutMs) }
    }

    /// A continuous fMP4 stream: the init segment, the current segment from its keyframe, then
    /// every part as it comes. Nil when there is nothing to play yet.
    func subscribe(onDrop: @escaping @Sendable (RoomError) -> Void) -> (token: Int, queue: ViewerQueue)? {
        lastUsedMs = now()
        guard unsupported == nil, let last = packager.segments.last, let initSegment = packager.inits[last.initGeneration] else { return nil }
        let queue = ViewerQueue(limits: settings.viewerQueue, onDrop: onDrop)
        let at = now()
        queue.offer(Self.chunk(initSegment, keyframe: false, header: true), nowMs: at)
        for part in last.parts { queue.offer(Self.chunk(part.data, keyframe: part.independent, header: false), nowMs: at) }
        let token = nextToken
        nextToken += 1
        subscribers[token] = queue
        return (token, queue)
    }

    func unsubscribe(_ token: Int) {
        subscribers.removeValue(forKey: token)?.finish(nil)
        lastUsedMs = now()
    }

    /// Keeps an HLS player's viewing session open (or opens it): HLS players are online while
    /// their requests keep coming.
    func touch(viewerId: String, name: String, phone: String) async throws {
        let at = now()
        lastUsedMs = at
        if sessions[viewerId] != nil {
            sessions[viewerId]!.lastSeenMs = at
            return
        }
        sessions[viewerId] = Session(token: nil, lastSeenMs: at)
        let token: Int
        do {
            token = try await room.enter(viewerId: viewerId, name: name, phone: phone, onEnd: {})
        } catch {
            sessions[viewerId] = nil
            throw error
        }
        if sessions[viewerId] == nil || closed {
            await room.leave(token)  // swept or shut down meanwhile
        } else {
            sessions[viewerId]!.token = token
        }
    }

    /// How long an HLS player may go without a request before it is counted as gone: a few
    /// target durations.
    var sessionTimeoutMs: Int64 { Int64(max(6, 3 * packager.targetDuration)) * 1000 }

    /// Ends quiet HLS sessions; false when the whole packaging has been idle long enough to go.
    private func sweep() async -> Bool {
        let at = now()
        for (viewer, s) in sessions where at - s.lastSeenMs > sessionTimeoutMs {
            sessions[viewer] = nil
            if let t = s.token { await room.leave(t) }
        }
        return !(subscribers.isEmpty && sessions.isEmpty && at - lastUsedMs > settings.idleMs)
    }

    func used() { lastUsedMs = now() }

    // MARK: blocking requests

    /// Waits until the playlist holds part `part` of segment `msn` (or, without a part, the whole
    /// segment), or anything later; false if that did not happen by `timeoutMs`.
    func waitFor(msn: Int, part: Int?, timeoutMs: Int64) async -> Bool {
        let deadline = now() + timeoutMs
        while !has(msn: msn, part: part) {
            if closed || unsupported != nil || now() >= deadline { return false }
            await changed(until: deadline)
        }
        return true
    }

    private func has(msn: Int, part: Int?) -> Bool {
        guard let last = packager.segments.last else { return false }
        if msn < last.msn { return true }
        guard msn == last.msn else { return false }
        if let part { return last.parts.count > part || last.complete }
        return last.complete
    }

    private func changed(until deadline: Int64) async {
        let id = nextToken
        nextToken += 1
        let wait = max(1, deadline - now())
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            waiters[id] = c
            Task { [weak self] in
                try? await Task.sleep(for: .milliseconds(wait))
                await self?.wake(id)
            }
        }
    }

    private func wake(_ id: Int) { waiters.removeValue(forKey: id)?.resume() }

    private func wakeWaiters() {
        let all = waiters
        waiters = [:]
        for c in all.values { c.resume() }
    }
}

/// The packaged rooms, made on first demand and forgotten when they go.
actor PackagedRooms {
    private var rooms: [String: PackagedRoom] = [:]
    private var starting: [String: Task<PackagedRoom, any Error>] = [:]
    private let settings: PackagedRoom.Settings
    private let now: @Sendable () -> Int64

    init(settings: PackagedRoom.Settings, now: @escaping @Sendable () -> Int64) {
        self.settings = settings
        self.now = now
    }

    func packaging(_ room: RoomActor) async throws -> PackagedRoom {
        if let p = rooms[room.id] { return p }
        if let t = starting[room.id] { return try await t.value }
        let (settings, now) = (self.settings, self.now)
        let task = Task {
            let p = PackagedRoom(room: room, settings: settings, now: now)
            try await p.start { [weak self] in Task { await self?.forget(p) } }
            return p
        }
        starting[room.id] = task
        defer { starting[room.id] = nil }
        let p = try await task.value
        rooms[room.id] = p
        return p
    }

    private func forget(_ p: PackagedRoom) {
        if rooms[p.roomId] === p { rooms[p.roomId] = nil }
    }

    func shutDown() async {
        for p in rooms.values { await p.shutDown() }
        rooms = [:]
    }
}
