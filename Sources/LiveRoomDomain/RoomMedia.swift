import LiveRoomMessages
import NIOCore
import Synchronization

/// Media limits of a room.
public struct MediaSettings: Sendable, Equatable {
    /// A publisher silent this long is considered gone.
    public var publisherIdleTimeoutMs: Int64 = 10_000
    /// The group of pictures kept for viewers joining mid-stream is dropped past this size.
    public var maxGOPBytes = 16 * 1024 * 1024
    /// Header chunks (FLV header, codec configuration) kept for new viewers.
    public var maxHeaderBytes = 1024 * 1024
    public var viewerQueue = ViewerQueue.Limits()
    public init() {}
}

/// Work handed to a lane and not yet run. A lane falls behind only when the daemon is short of
/// CPU (its work never waits on a viewer); the room then waits for it, and so, through flow
/// control, does the publisher, rather than queueing media without bound.
final class LaneBacklog: Sendable {
    private let pending = Mutex(0)
    /// Items a lane may be behind before the room waits; it resumes at half.
    static let limit = 64

    func added() { pending.withLock { $0 += 1 } }
    func ran() { pending.withLock { $0 -= 1 } }
    var isOver: Bool { pending.withLock { $0 > Self.limit } }

    func waitUntilCaughtUp() async throws {
        while pending.withLock({ $0 > Self.limit / 2 }) { try await Task.sleep(for: .milliseconds(1)) }
    }
}

/// A viewer's call on a room.
struct Watcher {
    let viewerId: String
    /// The room's media for this viewer; nil for a viewer fed from elsewhere (see `enter`).
    let feed: (queue: ViewerQueue, lane: any ViewerLane)?
    /// Viewers count in the statistics; outputs (relays to platforms) do not.
    var counted = true
    /// Told when the room ends a viewer that has no queue to tell.
    var onEnd: (@Sendable () -> Void)? = nil
}

/// The viewers one lane feeds; `members` is kept as an array so that handing it to the lane
/// for each chunk copies nothing.
struct LaneGroup {
    let lane: any ViewerLane
    let backlog = LaneBacklog()
    private var tokens: [Int: Int] = [:]  // token -> index in members
    private(set) var members: [ViewerQueue] = []
    private var order: [Int] = []  // token at each index

    init(lane: any ViewerLane) { self.lane = lane }

    /// Runs `work` on the lane, counted in its backlog.
    func submit(_ work: @escaping @Sendable () -> Void) {
        let backlog = self.backlog
        backlog.added()
        lane.run {
            work()
            backlog.ran()
        }
    }

    mutating func add(_ token: Int, _ queue: ViewerQueue) {
        tokens[token] = members.count
        members.append(queue)
        order.append(token)
    }

    mutating func remove(_ token: Int) {
        guard let i = tokens.removeValue(forKey: token) else { return }
        let last = members.count - 1
        if i != last {
            members[i] = members[last]
            order[i] = order[last]
            tokens[order[i]] = i
        }
        members.removeLast()
        order.removeLast()
    }
}

extension RoomActor {
    // MARK: publishing

    /// Starts a publisher after checking its key. A publisher already on the room is ended with
    /// ABORTED: a broadcaster reconnecting after a drop takes over at once.
    public func beginPublish(key: String, publisherId: String) throws -> PublishSession {
        guard record.publishesThroughUs else {
            throw RoomError(.failedPrecondition,
                "room \(id) goes live directly on platform \(record.platformId): publish to \(record.pushServer) with the platform's key; LiveRoom mirrors it")
        }
        try authorizePublish(key: key)
        return startSession(publisherId: publisherId)
    }

    /// Starts the pull of a platform's live into this (direct ingest) room: a publisher whose
    /// key the platform checked.
    public func beginMirror(publisherId: String) throws -> PublishSession {
        guard record.status != .ended else { throw RoomError(.failedPrecondition, "room \(id) has ended") }
        return startSession(publisherId: publisherId)
    }

    private func startSession(publisherId: String) -> PublishSession {
        if let old = publisher {
            old.end(RoomError(.aborted, "another publisher with a valid key took over room \(id)"))
        }
        let session = PublishSession(publisherId: publisherId)
        publisher = session
        lastChunkAtMs = clock.nowMs()
        header = []
        headerBytes = 0
        gop = []
        gopBytes = 0
        broadcast(.started)
        return session
    }

    /// Takes one chunk from the current publisher and hands it to every viewer, sharing the
    /// payload buffer (no copy per viewer).
    public func publish(_ chunk: MediaChunk, session: PublishSession) async throws {
        guard publisher === session else {
            throw RoomError(.aborted, "another publisher took over room \(id)")
        }
        let now = clock.nowMs()
        lastChunkAtMs = now
        if record.status == .notStarted {
            var next = record
            next.status = .live
            next.updatedAtMs = now
            try await save(next, reason: "media arriving")
        }
        let size = chunk.payload.readableBytes
        if chunk.header {
            if headerBytes + size <= media.maxHeaderBytes {
                header.append(chunk)
                headerBytes += size
            }
        } else if chunk.keyframe {
            gop = [chunk]
            gopBytes = size
        } else if !gop.isEmpty {
            gop.append(chunk)
            gopBytes += size
            if gopBytes > media.maxGOPBytes {
                gop = []
                gopBytes = 0
            }
        }
        metrics.bytesIn.increment(by: size)
        let bytesOut = metrics.bytesOut
        // With more than one thread sending, each lane sends its own copy: 16 KiB copied per
        // lane is cheaper than a thousand viewers' reference counts bouncing between cores.
        let isolate = lanes.count > 1 || lanes.values.contains { !($0.lane is InlineLane) }
        for group in lanes.values {
            let members = group.members
            group.submit {
                var c = chunk
                if isolate { c.payload = ByteBufferAllocator().buffer(buffer: chunk.payload) }
                // A viewer dropped here is removed when its call ends (the queue tells it).
                var delivered = 0
                for q in members where q.offer(c, nowMs: now) { delivered += 1 }
                bytesOut.increment(by: size * delivered)
            }
        }
        for group in lanes.values where group.backlog.isOver { try await group.backlog.waitUntilCaughtUp() }
    }

    /// Ends a publisher's session (it finished, failed, or went silent).
    public func endPublish(_ session: PublishSession, reason: String) async {
        guard publisher === session else { return }
        publisher = nil
        header = []
        headerBytes = 0
        gop = []
        gopBytes = 0
        broadcast(.ended)
        if record.status == .live {
            var next = record
            next.status = .notStarted
            next.updatedAtMs = clock.nowMs()
            // Often called from a call that was just cancelled (aborted, disconnected): the
            // store refuses work in a cancelled task, so write from a task of its own.
            await Task { try? await self.save(next, reason: reason) }.value
        }
    }

    /// Watches a session on behalf of its transport: `onEnd` is called once if the room ends
    /// it (takeover, close) or it stays silent past the idle timeout. Cancel the task when the
    /// publisher finishes by itself.
    public nonisolated func supervise(_ session: PublishSession, onEnd: @escaping @Sendable (RoomError) -> Void) -> Task<Void, Never> {
        Task {
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    for await reason in session.ended {
                        onEnd(reason)
                        return
                    }
                }
                group.addTask {
                    while !Task.isCancelled {
                        try? await Task.sleep(for: .milliseconds(250))
                        if await self.isIdle(session) {
                            onEnd(RoomError(.aborted, "no media for a while: the publisher was considered gone"))
                            return
                        }
                    }
                }
                await group.next()
                group.cancelAll()
            }
        }
    }

    /// Whether the session has sent nothing for the idle timeout.
    public func isIdle(_ session: PublishSession) -> Bool {
        publisher === session && clock.nowMs() - lastChunkAtMs >= media.publisherIdleTimeoutMs
    }

    func endMedia(closing: Bool) {
        publisher?.end(RoomError(.aborted, "room \(id) was closed"))
        publisher = nil
        broadcast(.closed)
        for token in Array(watchers.keys) { leave(token) }
    }

    private func broadcast(_ kind: StreamEventKind) {
        var e = StreamEvent()
        e.kind = kind
        e.atMs = clock.nowMs()
        for group in lanes.values {
            let members = group.members
            let event = e
            group.submit { for q in members { q.offer(event: event) } }
        }
    }

    // MARK: watching

    /// Adds a viewer. Its queue starts with the stream's header and the current group of
    /// pictures, so playback can start at once.
    /// `lane` feeds the viewer's queue (see `ViewerLane`).
    public func join(viewerId: String, name: String, phone: String, lane: any ViewerLane = InlineLane.shared,
                     onDrop: @escaping @Sendable (RoomError) -> Void = { _ in }) async throws -> (token: Int, queue: ViewerQueue) {
        guard record.status != .ended else {
            throw RoomError(.failedPrecondition, "room \(id) has ended")
        }
        try Self.checkViewer(viewerId: viewerId, name: name, phone: phone)
        try await loadStats()
        // Checked again after the suspension: the room may have closed meanwhile, and a viewer
        // added to a closed room would never be told.
        guard record.status != .ended else {
            throw RoomError(.failedPrecondition, "room \(id) has ended")
        }
        let queue = ViewerQueue(limits: media.viewerQueue, droppedChunks: metrics.chunksDropped, onDrop: onDrop)
        for c in header + gop { queue.offer(c, nowMs: clock.nowMs()) }
        let token = nextWatcher
        nextWatcher += 1
        watchers[token] = Watcher(viewerId: viewerId, feed: (queue, lane))
        lanes[ObjectIdentifier(lane), default: LaneGroup(lane: lane)].add(token, queue)
        countIn(viewerId: viewerId, name: name, phone: phone)
        return (token, queue)
    }

    /// Counts a viewer whose media does not come from the room's queue (HTTP players fed by
    /// a packager of the room's stream): online from now until `leave`, like a Watch viewer.
    /// `onEnd` is called if the room ends the viewer (it closed).
    public func enter(viewerId: String, name: String, phone: String, onEnd: @escaping @Sendable () -> Void) async throws -> Int {
        try Self.checkViewer(viewerId: viewerId, name: name, phone: phone)
        guard record.status != .ended else { throw RoomError(.failedPrecondition, "room \(id) has ended") }
        try await loadStats()
        guard record.status != .ended else { throw RoomError(.failedPrecondition, "room \(id) has ended") }
        let token = nextWatcher
        nextWatcher += 1
        watchers[token] = Watcher(viewerId: viewerId, feed: nil, onEnd: onEnd)
        countIn(viewerId: viewerId, name: name, phone: phone)
        return token
    }

    /// Checks a viewer's id (required) and the sizes of its strings.
    public static func checkViewer(viewerId: String, name: String, phone: String) throws {
        guard !viewerId.isEmpty else { throw RoomError(.invalidArgument, "viewer_id is required") }
        // Bounded so that a page of viewers always fits in an answer (see `viewerPage`).
        for (field, value, limit) in [("viewer_id", viewerId, 128), ("name", name, 128), ("phone", phone, 32)] where value.utf8.count > limit {
            throw RoomError(.invalidArgument, "\(field) is \(value.utf8.count) bytes; at most \(limit)")
        }
    }

    private func countIn(viewerId: String, name: String, phone: String) {
        let now = clock.nowMs()
        connections[viewerId, default: 0] += 1
        if connections[viewerId] == 1 { metrics.viewersOnline.increment() }
        var v = viewers[viewerId] ?? ViewerRecord(viewerId: viewerId, name: name, phone: phone, online: false, firstEntryMs: now,
                                                  lastLeaveMs: 0, timesLeft: 0, watchMs: 0, sessionStartedMs: now, lastSeenMs: now)
        if !name.isEmpty { v.name = name }
        if !phone.isEmpty { v.phone = phone }
        if !v.online {
            v.online = true
            v.sessionStartedMs = now
        }
        v.lastSeenMs = now
        viewers[viewerId] = v
        dirtyViewers.insert(viewerId)
        let online = Int64(connections.count)  // viewers with no open call are removed from it
        if online > peakConcurrent {
            peakConcurrent = online
            peakDirty = true
        }
    }

    /// Adds an output (a relay to a platform): it gets what a viewer gets, the stream header and
    /// the current group of pictures first, but is not a viewer in the statistics. Fails once
    /// the room has ended. Remove it with `leave`.
    public func attachOutput(lane: any ViewerLane = InlineLane.shared, limits: ViewerQueue.Limits? = nil,
                             onDrop: @escaping @Sendable (RoomError) -> Void = { _ in }) throws -> (token: Int, queue: ViewerQueue) {
        guard record.status != .ended else { throw RoomError(.failedPrecondition, "room \(id) has ended") }
        let queue = ViewerQueue(limits: limits ?? media.viewerQueue, droppedChunks: metrics.chunksDropped, onDrop: onDrop)
        let now = clock.nowMs()
        for c in header + gop { queue.offer(c, nowMs: now) }
        let token = nextWatcher
        nextWatcher += 1
        watchers[token] = Watcher(viewerId: "", feed: (queue, lane), counted: false)
        lanes[ObjectIdentifier(lane), default: LaneGroup(lane: lane)].add(token, queue)
        return (token, queue)
    }

    /// Whether a publisher is on the room now.
    public var isPublishing: Bool { publisher != nil }

    /// Removes a viewer's call; the viewer goes offline when their last call ends.
    public func leave(_ token: Int) {
        guard let w = watchers.removeValue(forKey: token) else { return }
        if let (queue, lane) = w.feed {
            let key = ObjectIdentifier(lane)
            lanes[key]?.remove(token)
            if lanes[key]?.members.isEmpty == true { lanes[key] = nil }
            // Through the lane, so that what was handed to it earlier (a closing event) comes first.
            lane.run { queue.finish(nil) }
        }
        w.onEnd?()
        guard w.counted else { return }
        let left = (connections[w.viewerId] ?? 1) - 1
        connections[w.viewerId] = left > 0 ? left : nil
        if left <= 0 { metrics.viewersOnline.decrement() }
        guard left <= 0, var v = viewers[w.viewerId], v.online else { return }
        let now = clock.nowMs()
        v.online = false
        v.watchMs += max(0, now - v.sessionStartedMs)
        v.timesLeft += 1
        v.lastLeaveMs = now
        v.lastSeenMs = now
        viewers[w.viewerId] = v
        dirtyViewers.insert(w.viewerId)
    }

    // MARK: statistics

    func loadStats() async throws {
        guard !statsLoaded else { return }
        let (peak, list) = try await store.loadViewers(roomId: id)
        guard !statsLoaded else { return }
        statsLoaded = true
        peakConcurrent = max(peakConcurrent, peak)
        for v in list where viewers[v.viewerId] == nil { viewers[v.viewerId] = v }
    }

    /// Online now, distinct viewers so far, peak concurrent, total watch time.
    public func viewerStats() async throws -> ViewerStats {
        try await loadStats()
        let now = clock.nowMs()
        var s = ViewerStats()
        s.onlineNow = Int64(viewers.values.filter(\.online).count)
        s.distinctViewers = Int64(viewers.count)
        s.peakConcurrent = peakConcurrent
        s.totalWatchMs = viewers.values.reduce(0) { $0 + $1.totalWatchMs(nowMs: now) }
        return s
    }

    /// Viewers in order of first entry; `offset` and `limit` page through them.
    /// A page of at most `limit` viewers whose strings add up to at most `maxBytes` (at least
    /// one viewer per page), so that the answer fits in a frame whatever the viewers are called.
    public func viewerPage(offset: Int, limit: Int, onlineOnly: Bool, maxBytes: Int = .max) async throws -> (viewers: [ViewerRecord], more: Bool) {
        try await loadStats()
        let all = viewers.values.filter { !onlineOnly || $0.online }
            .sorted { ($0.firstEntryMs, $0.viewerId) < ($1.firstEntryMs, $1.viewerId) }
        var page: [ViewerRecord] = []
        var bytes = 0
        for v in all.dropFirst(offset).prefix(limit) {
            // Strings plus the fixed fields and tags at their largest.
            let size = v.viewerId.utf8.count + v.name.utf8.count + v.phone.utf8.count + 64
            if !page.isEmpty && bytes + size > maxBytes { break }
            page.append(v)
            bytes += size
        }
        return (page, offset + page.count < all.count)
    }

    /// Writes changed statistics, and the last moment online viewers were seen.
    public func flushStats() async throws {
        guard statsLoaded else { return }
        let now = clock.nowMs()
        var anyOnline = false
        for (id, v) in viewers where v.online {
            viewers[id]?.lastSeenMs = now
            anyOnline = true
        }
        // One statement checkpoints everyone online; only changed viewers are written in full.
        if anyOnline { try await store.touchOnlineViewers(roomId: id, atMs: now) }
        guard !dirtyViewers.isEmpty || peakDirty else { return }
        let batch = dirtyViewers.compactMap { viewers[$0] }
        dirtyViewers.removeAll()
        peakDirty = false
        do {
            try await store.saveViewers(roomId: id, peakConcurrent: peakConcurrent, batch)
        } catch {
            for v in batch { dirtyViewers.insert(v.viewerId) }
            peakDirty = true
            throw error
        }
    }
}
