import Foundation
import Synchronization

/// Wall-clock time in unix milliseconds. Injected so tests can move time instead of sleeping.
public protocol WallClock: Sendable {
    func nowMs() -> Int64
}

public struct SystemWallClock: WallClock {
    public init() {}
    public func nowMs() -> Int64 { Int64((Date().timeIntervalSince1970 * 1000).rounded()) }
}

/// System time plus an offset that tests advance.
public final class AdjustableClock: WallClock {
    private let offset = Mutex<Int64>(0)
    private let base: WallClock

    public init(base: WallClock = SystemWallClock()) { self.base = base }

    public func nowMs() -> Int64 { base.nowMs() + offset.withLock { $0 } }

    @discardableResult
    public func advance(byMs ms: Int64) -> Int64 {
        offset.withLock { $0 += ms }
        return nowMs()
    }
}
