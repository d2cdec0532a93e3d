/// Where viewers' queues are fed. A room hands each chunk and event to every lane that has
/// viewers once, and the lane offers it into its own viewers' queues on its own thread. With
/// one lane per event loop, fan-out to a thousand viewers costs one hand-over per loop per
/// chunk, and a viewer's queue, its writes and the reference counts on what it sends are all
/// touched by one core only.
public protocol ViewerLane: AnyObject, Sendable {
    /// Runs `work` on the lane's thread, in the order submitted.
    func run(_ work: @escaping @Sendable () -> Void)
}

/// Feeds queues right away on the room's own thread: for callers with no thread of their own.
public final class InlineLane: ViewerLane {
    /// One for everyone: it has no state, and viewers on one lane share each chunk's buffer.
    public static let shared = InlineLane()
    public init() {}
    public func run(_ work: @escaping @Sendable () -> Void) { work() }
}
