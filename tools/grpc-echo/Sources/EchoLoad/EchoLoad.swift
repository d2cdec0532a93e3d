/// The load loop both baselines share, so that they are measured exactly alike: `inflight`
/// callers each make `call` back to back for `seconds`, after a warm-up of a fifth of that, and
/// one JSON line is printed: {"calls":..,"callsPerSecond":..,"p50Micros":..,"p99Micros":..}.
public func measureAndPrint(inflight: Int, seconds: Double, _ call: @escaping @Sendable () async throws -> Void) async throws {
    let measureFrom = ContinuousClock.now + .milliseconds(Int64(seconds / 5 * 1000))
    let end = measureFrom + .milliseconds(Int64(seconds * 1000))
    let samples = try await withThrowingTaskGroup(of: [Double].self) { group in
        for _ in 0..<inflight {
            group.addTask {
                var out: [Double] = []
                while true {
                    let t0 = ContinuousClock.now
                    if t0 >= end { break }
                    try await call()
                    if t0 >= measureFrom {
                        let d = (ContinuousClock.now - t0).components
                        out.append(Double(d.seconds) + Double(d.attoseconds) / 1e18)
                    }
                }
                return out
            }
        }
        var all: [Double] = []
        for try await s in group { all += s }
        return all.sorted()
    }
    func pct(_ p: Double) -> Double { samples.isEmpty ? 0 : samples[min(samples.count - 1, Int(Double(samples.count) * p))] * 1e6 }
    print(#"{"calls":\#(samples.count),"callsPerSecond":\#(Double(samples.count) / seconds),"p50Micros":\#(pct(0.5)),"p99Micros":\#(pct(0.99))}"#)
}
