import CoreMetrics
import LiveRoomMessages
import NIOCore
import Synchronization

/// What a viewer's Watch call receives, in order.
public enum ViewerItem: Sendable {
    case chunk(MediaChunk)
    case event(StreamEvent)
}

/// One viewer's bounded queue. The room offers chunks without waiting; the viewer's call drains
/// it at its own pace. A viewer that falls behind skips to the next keyframe; one that stays
/// behind is disconnected, so a slow viewer never slows the publisher or anyone else, and the
/// queue's memory stays bounded.
public final class ViewerQueue: Sendable {
    public struct Limits: Sendable, Equatable {
        /// Queued bytes past which the viewer skips to the next keyframe.
        public var skipBytes = 4 * 1024 * 1024
        /// Skips within `window` after which the viewer is disconnected.
        public var maxSkips = 3
        public var windowMs: Int64 = 30_000
        /// A viewer that takes nothing for this long while media waits for it is disconnected:
        /// at ordinary bitrates it would otherwise skip every few seconds for ever, counted online.
        public var maxStallMs: Int64 = 15_000
        public init() {}
    }

    private struct State {
        /// Popped items are released at once (an array with a moving head would keep them, and
        /// the media they hold, alive).
        var items = CircularBuffer<ViewerItem>(initialCapacity: 4)
        var bytes = 0
        var skipping = false
        var skippedChunks: UInt64 = 0
        var skipTimes: [Int64] = []
        /// Items the consumer has taken, and when a wait for it to take more began.
        var taken: UInt64 = 0
        var stall: (taken: UInt64, sinceMs: Int64)?
        var finished: RoomError?? = nil  // .some(nil): ended normally
        /// The consumer: told when items arrive in an empty queue, or it ends.
        var ready: (@Sendable () -> Void)?
        /// The consumer, handed an item offered to the empty queue (see `onReady(direct:_:)`).
        var direct: (@Sendable (ViewerItem) -> Bool)?
    }

    private let state = Mutex(State())
    private let limits: Limits
    private let onDrop: @Sendable (RoomError) -> Void
    private let droppedChunks: CoreMetrics.Counter?

    /// - Parameter onDrop: called once if the viewer is disconnected for falling behind, so
    ///   the call can be ended even while it is blocked writing to a stalled peer.
    /// - Parameter droppedChunks: counts chunks this viewer never got because it was slow.
    public init(limits: Limits = Limits(), droppedChunks: CoreMetrics.Counter? = nil,
                onDrop: @escaping @Sendable (RoomError) -> Void = { _ in }) {
        self.limits = limits
        self.onDrop = onDrop
        self.droppedChunks = droppedChunks
    }

    /// Offers a chunk. Returns false when the viewer has been disconnected for falling behind.
    @discardableResult
    public func offer(_ chunk: MediaChunk, nowMs: Int64) -> Bool {
        var droppedWith: RoomError?
        var notify: (@Sendable () -> Void)?
        var direct: (@Sendable (ViewerItem) -> Bool)?
        var dropped = 0
        defer { if dropped > 0 { droppedChunks?.increment(by: dropped) } }
        let alive = state.withLock { s -> Bool in
            /// Ends the queue for a viewer too slow to keep: drops what is queued, tells the call.
            func disconnect(_ why: String) -> Bool {
                let error = RoomError(.resourceExhausted, "viewer too slow: \(why); reconnect when the network allows")
                droppedWith = error
                notify = s.ready
                dropped += Self.end(&s, error) + 1
                return false
            }
            guard s.finished == nil else { return false }
            if s.items.isEmpty && !s.skipping {
                s.stall = nil  // caught up
            } else if s.stall == nil || s.stall!.taken != s.taken {
                s.stall = (s.taken, nowMs)
            } else if nowMs - s.stall!.sinceMs > limits.maxStallMs {
                return disconnect("took nothing for \(limits.maxStallMs / 1000) s")
            }
            if s.skipping {
                guard chunk.keyframe || chunk.header else {
                    s.skippedChunks += 1
                    dropped += 1
                    return true
                }
                s.skipping = false
                Self.appendSkipped(&s, nowMs)
            } else if s.bytes + chunk.payload.readableBytes > limits.skipBytes && !chunk.header {
                s.skipTimes = s.skipTimes.filter { nowMs - $0 < limits.windowMs } + [nowMs]
                if s.skipTimes.count > limits.maxSkips {
                    return disconnect("fell behind \(s.skipTimes.count) times in \(limits.windowMs / 1000) s")
                }
                // Drop the media queued (events stay) and wait for the next keyframe.
                let removed = Self.dropChunks(&s)
                s.skippedChunks += UInt64(removed)
                dropped += removed
                guard chunk.keyframe else {
                    s.skipping = true
                    s.skippedChunks += 1
                    dropped += 1
                    return true
                }
                Self.appendSkipped(&s, nowMs)
            }
            if s.items.isEmpty {
                if let d = s.direct {
                    direct = d
                    return true
                }
                notify = s.ready
            }
            Self.append(&s, .chunk(chunk))
            return true
        }
        // A chunk taken directly needs no progress mark: it was offered to an empty queue,
        // where no stall is counted.
        if let direct, !direct(.chunk(chunk)) {
            // Declined: queue it after all.
            notify = state.withLock { s in
                guard s.finished == nil else { return nil }
                let wasEmpty = s.items.isEmpty
                Self.append(&s, .chunk(chunk))
                return wasEmpty ? s.ready : nil
            }
        }
        notify?()
        if let droppedWith { onDrop(droppedWith) }
        return alive
    }

    /// Offers a stream event (never dropped).
    public func offer(event: StreamEvent) {
        let notify = state.withLock { s -> (@Sendable () -> Void)? in
            guard s.finished == nil else { return nil }
            let wasEmpty = s.items.isEmpty
            Self.append(&s, .event(event))
            return wasEmpty ? s.ready : nil
        }
        notify?()
    }

    /// Ends the queue: the viewer drains what is queued, then polls `.finished` (with the error).
    public func finish(_ error: RoomError? = nil) {
        let notify = state.withLock { s -> (@Sendable () -> Void)? in
            guard s.finished == nil else { return nil }
            s.finished = .some(error)
            if error != nil {
                s.items.removeAll()
                s.bytes = 0
            }
            return s.ready
        }
        notify?()
    }

    /// What a callback-driven consumer gets from `poll()`.
    public enum Poll: Sendable {
        case item(ViewerItem)
        case empty
        /// Nothing more will come: nil when the stream ended normally, else why it was ended.
        case finished(RoomError?)
    }

    /// Takes the next item without waiting.
    public func poll() -> Poll {
        state.withLock { s in
            if let item = Self.pop(&s) { return .item(item) }
            if let finished = s.finished { return .finished(finished) }
            return .empty
        }
    }

    /// Stops calling the `onReady` handler (the consumer is done).
    public func stopNotifying() {
        state.withLock { s in
            s.ready = nil
            s.direct = nil
        }
    }

    /// Calls `handler` whenever items arrive in an empty queue and when the queue ends; the
    /// consumer then drains with `poll()`. Called right away if items are already waiting.
    ///
    /// `direct`, if given, is offered a chunk that arrives in the empty queue first, on the
    /// offering thread: it returns true if it took the chunk (sparing a queue round trip, which
    /// fan-out pays per viewer per chunk), false to have it queued as usual. Only for a queue
    /// that one thread feeds, as a room's lane does.
    public func onReady(direct: (@Sendable (ViewerItem) -> Bool)? = nil, _ handler: @escaping @Sendable () -> Void) {
        let now = state.withLock { s -> Bool in
            s.ready = handler
            s.direct = direct
            return !s.items.isEmpty || s.finished != nil
        }
        if now { handler() }
    }

    /// Bytes waiting to be sent.
    public var queuedBytes: Int { state.withLock { $0.bytes } }

    /// Tells the viewer how many chunks it missed, before the keyframe it resumes at.
    private static func appendSkipped(_ s: inout State, _ nowMs: Int64) {
        var e = StreamEvent()
        e.kind = .skipped
        e.atMs = nowMs
        e.skippedChunks = s.skippedChunks
        s.skippedChunks = 0
        append(&s, .event(e))
    }

    private static func append(_ s: inout State, _ item: ViewerItem) {
        if case .chunk(let c) = item { s.bytes += c.payload.readableBytes }
        s.items.append(item)
    }

    /// Removes the queued chunks, keeping events in order; returns how many chunks went.
    private static func dropChunks(_ s: inout State) -> Int {
        let before = s.items.count
        var kept = CircularBuffer<ViewerItem>(initialCapacity: 4)
        for item in s.items { if case .event = item { kept.append(item) } }
        s.items = kept
        s.bytes = 0
        return before - kept.count
    }

    /// Ends the queue with `error`, dropping what is queued; returns how many chunks went.
    private static func end(_ s: inout State, _ error: RoomError) -> Int {
        s.finished = .some(error)
        let count = s.items.count
        s.items.removeAll()
        s.bytes = 0
        return count
    }

    private static func pop(_ s: inout State) -> ViewerItem? {
        guard let item = s.items.popFirst() else { return nil }
        s.taken &+= 1
        if case .chunk(let c) = item { s.bytes -= c.payload.readableBytes }
        return item
    }
}
