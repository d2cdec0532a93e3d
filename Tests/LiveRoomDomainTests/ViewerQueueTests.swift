import LiveRoomMessages
import NIOCore
import Synchronization
import XCTest

@testable import LiveRoomDomain

final class ViewerQueueTests: XCTestCase {
    private func chunk(_ n: UInt64, keyframe: Bool = false, size: Int = 1000) -> MediaChunk {
        var c = MediaChunk()
        c.sequence = n
        c.keyframe = keyframe
        c.payload = ByteBuffer(repeating: UInt8(truncatingIfNeeded: n), count: size)
        return c
    }

    private func drain(_ q: ViewerQueue) -> [String] {
        var out: [String] = []
        while case .item(let item) = q.poll() {
            switch item {
            case .chunk(let c): out.append("\(c.sequence)")
            case .event(let e): out.append(e.kind == .skipped ? "skipped \(e.skippedChunks)" : "\(e.kind)")
            }
        }
        return out
    }

    func testAViewerThatFallsBehindSkipsToTheNextKeyframeAndIsToldHowMuchItMissed() {
        var limits = ViewerQueue.Limits()
        limits.skipBytes = 3500
        let q = ViewerQueue(limits: limits)
        for n in 0..<3 { XCTAssertTrue(q.offer(chunk(UInt64(n), keyframe: n == 0), nowMs: 0)) }
        XCTAssertEqual(q.queuedBytes, 3000)
        XCTAssertTrue(q.offer(chunk(3), nowMs: 0), "over the limit: dropped, still connected")
        XCTAssertTrue(q.offer(chunk(4), nowMs: 0))
        XCTAssertEqual(q.queuedBytes, 0, "what was queued is dropped")
        XCTAssertTrue(q.offer(chunk(5, keyframe: true), nowMs: 0))
        XCTAssertEqual(drain(q), ["skipped 5", "5"], "three queued and two new were missed; resumes at the keyframe")
    }

    func testAViewerThatKeepsFallingBehindIsDisconnected() {
        var limits = ViewerQueue.Limits()
        limits.skipBytes = 1500
        limits.maxSkips = 2
        final class Box: Sendable { let e = Mutex<RoomError?>(nil) }
        let box = Box()
        let q = ViewerQueue(limits: limits) { error in box.e.withLock { $0 = error } }
        var alive = true
        var n: UInt64 = 0
        while alive && n < 100 {
            alive = q.offer(chunk(n, keyframe: n % 3 == 0), nowMs: Int64(n))
            n += 1
        }
        XCTAssertFalse(alive, "disconnected after falling behind more than twice in the window")
        XCTAssertEqual(box.e.withLock { $0 }?.code, .resourceExhausted)
        guard case .finished(let error) = q.poll() else { return XCTFail("the queue ends") }
        XCTAssertEqual(error?.code, .resourceExhausted)
    }

    func testADirectConsumerTakesChunksOfferedToTheEmptyQueueAndOrderIsKept() {
        final class Taken: Sendable {
            let items = Mutex<[UInt64]>([])
            let accept = Mutex(true)
            let notified = Mutex(0)
        }
        let taken = Taken()
        let q = ViewerQueue()
        q.onReady(direct: { item in
            guard taken.accept.withLock({ $0 }), case .chunk(let c) = item else { return false }
            taken.items.withLock { $0.append(c.sequence) }
            return true
        }) { taken.notified.withLock { $0 += 1 } }
        q.offer(chunk(1, keyframe: true), nowMs: 0)
        q.offer(chunk(2), nowMs: 0)
        XCTAssertEqual(taken.items.withLock { $0 }, [1, 2], "taken directly")
        XCTAssertEqual(drain(q), [], "nothing queued")

        taken.accept.withLock { $0 = false }
        q.offer(chunk(3), nowMs: 0)
        XCTAssertEqual(taken.notified.withLock { $0 }, 1, "declined: queued, and the consumer told")
        taken.accept.withLock { $0 = true }
        q.offer(chunk(4), nowMs: 0)
        XCTAssertEqual(taken.items.withLock { $0 }, [1, 2], "the queue is not empty: 4 waits behind 3")
        var ended = StreamEvent()
        ended.kind = .ended
        q.offer(event: ended)
        XCTAssertEqual(drain(q), ["3", "4", "\(StreamEventKind.ended)"])
    }
}
