import LiveRoomDomain
import Synchronization

/// Awaits a viewer queue's items one at a time, for consumers that are tasks (relays) rather
/// than event-loop pumps.
final class QueueReader: Sendable {
    let queue: ViewerQueue
    private let waiter = Mutex<(signalled: Bool, continuation: CheckedContinuation<Void, Never>?)>((false, nil))

    init(_ queue: ViewerQueue) {
        self.queue = queue
        queue.onReady { [weak self] in self?.signal() }
    }

    deinit { queue.stopNotifying() }

    private func signal() {
        let c = waiter.withLock { s -> CheckedContinuation<Void, Never>? in
            if let c = s.continuation {
                s.continuation = nil
                return c
            }
            s.signalled = true
            return nil
        }
        c?.resume()
    }

    /// The next item; `.finished(nil)` also when the task is cancelled.
    func next() async -> ViewerQueue.Poll {
        while true {
            let p = queue.poll()
            if case .empty = p {} else { return p }
            if Task.isCancelled { return .finished(nil) }
            await withTaskCancellationHandler {
                await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                    let now = waiter.withLock { s -> Bool in
                        if s.signalled {
                            s.signalled = false
                            return true
                        }
                        s.continuation = c
                        return false
                    }
                    if now { c.resume() }
                }
            } onCancel: {
                signal()
            }
        }
    }
}
