import LiveRoomDomain
import LiveRoomMessages
import LiveRoomRPC
import NIOConcurrencyHelpers
import NIOCore
import Synchronization

/// Encodes each chunk's WatchResponse once for all its viewers on one lane: they all send the same bytes,
/// and the payload travels as an attachment that is shared, never copied.
final class WatchEncoder: @unchecked Sendable {
    // Confined to its lane's event loop, so it needs no lock.
    private struct Entry {
        var sequence: UInt64
        var address: UInt
        var length: Int
        var encoded: RPCPayload
    }

    private var entries: [Entry] = []
    private var next = 0
    private static let size = 32

    func encode(_ item: ViewerItem) throws -> RPCPayload {
        var r = WatchResponse()
        switch item {
        case .event(let e):
            r.message = .event(e)
            return try MessageCoding.encode(r)
        case .chunk(let c):
            // The cached payload holds the buffer, so its address cannot be reused meanwhile.
            let address = c.payload.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) }
            let length = c.payload.readableBytes
            // Newest first: viewers mostly ask for the chunk just offered.
            let n = entries.count
            for k in 0..<n {
                let e = entries[(next - 1 - k + 2 * n) % n]
                if e.sequence == c.sequence && e.address == address && e.length == length { return e.encoded }
            }
            r.message = .chunk(c)
            let encoded = try MessageCoding.encode(r)
            let e = Entry(sequence: c.sequence, address: address, length: length, encoded: encoded)
            if entries.count < Self.size { entries.append(e) } else { entries[next] = e }
            next = (next + 1) % Self.size
            return encoded
        }
    }
}

/// A room's viewers on one event loop are fed by that loop (see `ViewerLane`), with an encoder
/// of its own, so fan-out touches nothing another core is touching.
final class EventLoopLane: ViewerLane, @unchecked Sendable {
    // Loop-confined: `waiting`, `flushScheduled`.
    let eventLoop: EventLoop
    let encoder = WatchEncoder()
    let frames = SharedFrames()
    /// How long a viewer's writes may wait to be flushed together (nil: each at once). With
    /// chunks closer together than this, each write carries two or more: at 1000 viewers of a
    /// 3 Mbit/s stream, 50 ms cuts the daemon's CPU per GB by about a fifth.
    let flushDelay: TimeAmount?
    private var waiting: [ViewerPump] = []
    private var flushScheduled = false

    init(eventLoop: EventLoop, flushDelay: TimeAmount?) {
        self.eventLoop = eventLoop
        self.flushDelay = flushDelay
    }

    /// Always queued, even from the loop itself: running inline could overtake work queued earlier.
    func run(_ work: @escaping @Sendable () -> Void) { eventLoop.execute(work) }

    /// On the loop: flush `pump` with the others when the delay is up.
    func flushLater(_ pump: ViewerPump) {
        waiting.append(pump)
        guard !flushScheduled, let flushDelay else { return }
        flushScheduled = true
        eventLoop.assumeIsolated().scheduleTask(in: flushDelay) { [self] in
            flushScheduled = false
            let due = waiting
            waiting = []
            for p in due { p.flushNow() }
        }
    }
}

/// One lane per event loop, made on first use.
final class EventLoopLanes: Sendable {
    private let lanes = NIOLockedValueBox<[ObjectIdentifier: EventLoopLane]>([:])
    private let flushDelay: TimeAmount?

    init(flushDelay: TimeAmount?) { self.flushDelay = flushDelay }

    func lane(for eventLoop: EventLoop) -> EventLoopLane {
        lanes.withLockedValue { all in
            if let l = all[ObjectIdentifier(eventLoop)] { return l }
            let l = EventLoopLane(eventLoop: eventLoop, flushDelay: flushDelay)
            all[ObjectIdentifier(eventLoop)] = l
            return l
        }
    }
}

/// Moves one viewer's queue onto its connection from the connection's event loop: woken when
/// the room offers into an empty queue or the peer grants credit, it writes all it may and
/// flushes once. No task per viewer (the call is detached from its handler), no hop per chunk.
final class ViewerPump: @unchecked Sendable {
    // Loop-confined: `pending`, `pendingEndsStream`, `done`, `awaitingFlush`, `unflushedBytes`.
    // The rest is immutable or locked.
    private let queue: ViewerQueue
    private let push: PushWriter
    private let encoder: WatchEncoder
    private let frames: SharedFrames
    private let lane: EventLoopLane
    /// Flush with the lane's other viewers after its delay, rather than at once.
    private let merge: Bool
    private var awaitingFlush = false
    private var unflushedBytes = 0
    private let onFinish: @Sendable () -> Void
    private var pending: RPCPayload?
    private var pendingEndsStream = false
    private var done = false
    private let scheduled = Atomic(false)

    /// - Parameter onFinish: called once, on the event loop, when the stream is over for any reason.
    init(queue: ViewerQueue, push: PushWriter, lane: EventLoopLane, merge: Bool, onFinish: @escaping @Sendable () -> Void) {
        self.queue = queue
        self.push = push
        self.encoder = lane.encoder
        self.frames = lane.frames
        self.lane = lane
        self.merge = merge && lane.flushDelay != nil
        self.onFinish = onFinish
    }

    /// Starts pumping; the call stays open after the handler returns. Call on the event loop.
    func start() {
        push.detach { [self] _ in finish(nil) }  // ended by the peer, a deadline, shutdown or an abort
        guard !done else { return }
        push.onCredit { [self] in drain() }
        queue.onReady(direct: { [self] item in take(item) }) { [self] in schedule() }
    }

    /// From any thread: drain on the event loop (now, if this is it), once however often it
    /// is called.
    private func schedule() {
        if push.eventLoop.inEventLoop {
            drain()
            return
        }
        if !scheduled.exchange(true, ordering: .acquiringAndReleasing) { push.eventLoop.execute { self.drain() } }
    }

    /// Takes an item the room offers to the empty queue, on the event loop, without queueing
    /// it: written now, or kept until the peer grants credit. Declines off the loop, once over,
    /// or behind a kept message (the queue then keeps it, in order).
    private func take(_ item: ViewerItem) -> Bool {
        guard !done, pending == nil, push.eventLoop.inEventLoop else { return false }
        guard merge else {
            _ = send(item, flush: true)
            return true
        }
        guard send(item) else { return true }
        if case .chunk(let c) = item { unflushedBytes += c.payload.readableBytes }
        if unflushedBytes >= Self.mergeBytes {
            // A fast stream: enough for one write already, and holding more would only eat
            // into the viewer's flow-control window.
            unflushedBytes = 0
            push.flush()
        } else if !awaitingFlush {
            awaitingFlush = true
            lane.flushLater(self)
        }
        return true
    }

    /// Writes held for merging go out once this much has gathered, whatever the delay.
    private static let mergeBytes = 64 * 1024

    /// The lane's flush delay is up.
    func flushNow() {
        awaitingFlush = false
        unflushedBytes = 0
        if !done { push.flush() }
    }

    private func drain() {
        if scheduled.load(ordering: .relaxed) { scheduled.store(false, ordering: .relaxed) }
        guard !done else { return }
        var wrote = false
        defer {
            if wrote {
                unflushedBytes = 0
                push.flush()
            }
        }
        if let p = pending {
            pending = nil
            guard send(p, endsStream: pendingEndsStream) else { return }
            wrote = true
        }
        while !done {
            switch queue.poll() {
            case .empty:
                return
            case .finished(let error):
                finish(error.map { RPCStatus($0) } ?? .ok)
                return
            case .item(let item):
                guard send(item) else { return }
                wrote = true
            }
        }
    }

    /// Encodes and writes one item; true if it was written (to be flushed, unless `flush`).
    private func send(_ item: ViewerItem, flush: Bool = false) -> Bool {
        let payload: RPCPayload
        do { payload = try encoder.encode(item) } catch {
            finish(RPCStatus(.internal, "could not encode a media chunk: \(error)"))
            return false
        }
        if case .event(let e) = item, e.kind == .closed { return send(payload, endsStream: true, flush: flush) }
        return send(payload, endsStream: false, flush: flush)
    }

    private func send(_ payload: RPCPayload, endsStream: Bool, flush: Bool = false) -> Bool {
        // Chunks are the same message for every viewer on the lane; events are encoded afresh.
        let shared = payload.attachment == nil ? nil : frames
        switch flush ? push.writeAndFlush(payload, shared: shared) : push.write(payload, shared: shared) {
        case .written:
            if endsStream { finish(.ok) }
            return true
        case .noCredit:
            pending = payload
            pendingEndsStream = endsStream
            return false
        case .ended:
            finish(nil)
            return false
        case .tooLarge:
            finish(RPCStatus(.resourceExhausted, "a media chunk exceeds the maximum frame size"))
            return false
        }
    }

    /// Ends the stream once: with `status` sent to the viewer, or nil when the call already ended.
    private func finish(_ status: RPCStatus?) {
        guard !done else { return }
        done = true
        pending = nil
        queue.stopNotifying()
        push.onCredit(nil)
        if let status { push.end(status) }
        onFinish()
    }
}
