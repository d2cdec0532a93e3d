import NIOCore

/// Credit for sending MESSAGE frames on one call. A frame may go while credit is positive,
/// so one message up to the maximum frame size always fits; others wait for WINDOW_UPDATE.
struct SendWindow {
    private(set) var credit = Frame.initialWindow
    /// Usually empty; an empty array costs no allocation, which matters at one window per call.
    private var waiting: [(frame: Frame, promise: EventLoopPromise<Void>)] = []

    /// Returns the frames that may be written now, in order.
    mutating func enqueue(_ frame: Frame, _ promise: EventLoopPromise<Void>) -> [(frame: Frame, promise: EventLoopPromise<Void>)] {
        waiting.append((frame, promise))
        return drain()
    }

    mutating func grant(_ n: Int) -> [(frame: Frame, promise: EventLoopPromise<Void>)] {
        credit += n
        return drain()
    }

    private mutating func drain() -> [(frame: Frame, promise: EventLoopPromise<Void>)] {
        var ready: [(frame: Frame, promise: EventLoopPromise<Void>)] = []
        var taken = 0
        while credit > 0, taken < waiting.count {
            credit -= waiting[taken].frame.payloadLength
            ready.append(waiting[taken])
            taken += 1
        }
        waiting.removeFirst(taken)
        return ready
    }

    /// Fails every waiting send (the call ended). The error is made only if a send is waiting:
    /// this runs at the end of every call, and formatting a message for nobody costs.
    mutating func fail(_ error: @autoclosure () -> Error) {
        guard !waiting.isEmpty else { return }
        let failed = waiting
        waiting.removeAll()
        let e = error()
        for w in failed { w.promise.fail(e) }
    }

    /// Push mode: takes credit for `frame` if it may be written now (credit left and nothing
    /// queued ahead of it); false leaves the window unchanged.
    mutating func take(_ frame: Frame) -> Bool {
        guard credit > 0, waiting.isEmpty else { return false }
        credit -= frame.payloadLength
        return true
    }

    /// Takes credit for a frame written without queueing (the first message of a call).
    mutating func consume(_ frame: Frame) {
        credit -= frame.payloadLength
    }
}

/// How much the peer may still send on one call before it must wait for our WINDOW_UPDATE.
struct ReceiveWindow {
    private(set) var allowance = Frame.initialWindow

    /// False when the peer sent without credit: a flow-control violation.
    mutating func receive(_ n: Int) -> Bool {
        guard allowance > 0 else { return false }
        allowance -= n
        return true
    }

    mutating func grant(_ n: Int) { allowance += n }
}

extension Frame {
    static func windowUpdate(callID: UInt32, increment: Int, allocator: ByteBufferAllocator) -> Frame {
        var b = allocator.buffer(capacity: 4)
        b.writeInteger(UInt32(clamping: increment))
        return Frame(.windowUpdate, callID: callID, payload: b)
    }
}
