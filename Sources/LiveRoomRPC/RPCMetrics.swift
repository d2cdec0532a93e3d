import CoreMetrics
import NIOConcurrencyHelpers
import NIOCore

/// Calls by method and status code, and call latency by method. Series are made once per
/// (method, code) and cached, so a call costs a dictionary lookup, not a factory round trip.
/// Methods that are not registered count under `method="unknown"`, so a client cannot grow
/// the series without bound.
public final class RPCMetrics: Sendable {
    private let factory: any MetricsFactory
    private let timers: [String: CoreMetrics.Timer]
    private let counters = NIOLockedValueBox<[String: [CoreMetrics.Counter?]]>([:])

    public init(factory: any MetricsFactory, methods: [String]) {
        self.factory = factory
        var timers: [String: CoreMetrics.Timer] = [:]
        for m in methods {
            timers[m] = CoreMetrics.Timer(label: "liveroom_rpc_call_duration_seconds", dimensions: [("method", m)],
                                          preferredDisplayUnit: .seconds, factory: factory)
        }
        self.timers = timers
    }

    func callEnded(method: String, code: RPCStatus.Code, startedAt: NIODeadline?) {
        let known = timers[method] != nil
        let label = known ? method : "unknown"
        if let startedAt, let timer = timers[method] {
            timer.recordNanoseconds((NIODeadline.now() - startedAt).nanoseconds)
        }
        let index = Int(max(0, min(code.rawValue, 17)))
        let counter = counters.withLockedValue { all -> CoreMetrics.Counter in
            if let c = all[label]?[index] ?? nil { return c }
            let c = CoreMetrics.Counter(label: "liveroom_rpc_calls_total", dimensions: [("method", label), ("code", code.name)],
                                        factory: factory)
            var row = all[label] ?? Array(repeating: nil, count: 18)
            row[index] = c
            all[label] = row
            return c
        }
        counter.increment()
    }
}
