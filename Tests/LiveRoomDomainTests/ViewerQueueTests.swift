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

    func testASkipKeepsQueuedEventsAndSkipCountsAddUp() {
        var limits = ViewerQueue.Limits()
        limits.skipBytes = 2500
        let q = ViewerQueue(limits: limits)
        var started = StreamEvent()
        started.kind = .started
        q.offer(event: started)
        q.offer(chunk(0, keyframe: true), nowMs: 0)
        q.offer(chunk(1), nowMs: 0)
        q.offer(chunk(2), nowMs: 0)  // over: 0 and 1 dropped, skipping
        q.offer(chunk(3, keyframe: true), nowMs: 0)  // resumes: "skipped 3"
        q.offer(chunk(4), nowMs: 0)
        q.offer(chunk(5), nowMs: 0)  // over again: 3 and 4 dropped, the queued SKIPPED stays
        q.offer(chunk(6, keyframe: true), nowMs: 0)
        XCTAssertEqual(drain(q), ["STREAM_EVENT_KIND_STARTED", "skipped 3", "skipped 3", "6"], "events survive a skip; each skip counts its own chunks")
    }

    func testAViewerThatTakesNothingWhileMediaWaitsIsDisconnected() {
        var limits = ViewerQueue.Limits()
        limits.maxStallMs = 15_000
        final class Box: Sendable { let e = Mutex<RoomError?>(nil) }
        let box = Box()
        let q = ViewerQueue(limits: limits) { error in box.e.withLock { $0 = error } }
        // A small chunk a second, never near the skip limit: only the stall can end it.
        for t in 0...14 { XCTAssertTrue(q.offer(chunk(UInt64(t), keyframe: t == 0, size: 10), nowMs: Int64(t) * 1000)) }
        _ = q.poll()  // it takes one: the wait starts again
        for t in 15...29 { XCTAssertTrue(q.offer(chunk(UInt64(t), size: 10), nowMs: Int64(t) * 1000)) }
        XCTAssertFalse(q.offer(chunk(31, size: 10), nowMs: 31_000), "16 s without taking anything")
        XCTAssertTrue(box.e.withLock { $0 }?.message.contains("took nothing for 15 s") ?? false)

        // A viewer that is caught up is never stalled, however long the stream pauses.
        let idle = ViewerQueue(limits: limits)
        XCTAssertTrue(idle.offer(chunk(0, keyframe: true, size: 10), nowMs: 0))
        _ = idle.poll()
        XCTAssertTrue(idle.offer(chunk(1, size: 10), nowMs: 600_000))
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
