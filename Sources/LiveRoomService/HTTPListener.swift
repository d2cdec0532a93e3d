import Hummingbird
import LiveRoomRPC

/// Runs a Hummingbird application (made with the callback that reports its port) in a task
/// of its own until that task is cancelled; returns once it is bound. Fails with the reason
/// when it cannot bind.
func startHTTP<App: ApplicationProtocol>(_ make: (@escaping @Sendable (Int) -> Void) -> App) async throws -> (task: Task<Void, any Error>, port: Int) {
    let (bound, boundSource) = AsyncStream<Int>.makeStream()
    let app = make { port in
        boundSource.yield(port)
        boundSource.finish()
    }
    let task = Task {
        defer { boundSource.finish() }
        try await app.run()
    }
    var ports = bound.makeAsyncIterator()
    guard let port = await ports.next(), port != 0 else {
        let result = await task.result
        throw ServerStartError("\(result)")
    }
    return (task, port)
}
