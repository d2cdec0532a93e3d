import LiveRoomMessages
import LiveRoomRPC

/// Serving status of the daemon and of each service, as gRPC's health protocol reports it.
public actor HealthState {
    private var statuses: [String: ServingStatus] = ["": .serving]
    private var watchers: [Int: (service: String, continuation: AsyncStream<ServingStatus>.Continuation)] = [:]
    private var nextWatcher = 0
    private var draining = false
    private var storeWritable = true

    public init(services: [String]) {
        for s in services { statuses[s] = .serving }
    }

    public func status(of service: String) -> ServingStatus {
        statuses[service] ?? .serviceUnknown
    }

    /// Sets the status of `service` ("" = the whole daemon); setting "" sets every service.
    public func set(_ status: ServingStatus, for service: String = "") {
        if service.isEmpty {
            for key in statuses.keys { statuses[key] = status }
        } else {
            statuses[service] = status
        }
        for (_, w) in watchers where service.isEmpty || w.service == service {
            w.continuation.yield(statuses[w.service] ?? .serviceUnknown)
        }
    }

    /// The store stopped (or resumed) taking writes: NOT_SERVING while it cannot, unless draining.
    public func setStoreWritable(_ writable: Bool) {
        guard writable != storeWritable else { return }
        storeWritable = writable
        if !draining { set(writable ? .serving : .notServing) }
    }

    /// Graceful shutdown began: NOT_SERVING from now on.
    public func beginDraining() {
        draining = true
        set(.notServing)
    }

    func watch(_ service: String) -> AsyncStream<ServingStatus> {
        let (stream, continuation) = AsyncStream<ServingStatus>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let id = nextWatcher
        nextWatcher += 1
        watchers[id] = (service, continuation)
        continuation.yield(statuses[service] ?? .serviceUnknown)
        continuation.onTermination = { _ in Task { await self.unwatch(id) } }
        return stream
    }

    private func unwatch(_ id: Int) { watchers[id] = nil }

    /// Ends every Watch call (at shutdown).
    public func finishWatchers() {
        for w in watchers.values { w.continuation.finish() }
        watchers.removeAll()
    }
}

/// `liveroom.v1.Health`.
public enum HealthService {
    public static func register(_ state: HealthState, in registry: inout ServiceRegistry) {
        registry.unary(Health.check) { request, _ in
            let status = await state.status(of: request.service)
            if status == .serviceUnknown {
                throw RPCStatus(.notFound, "unknown service \"\(request.service)\"")
            }
            var r = HealthCheckResponse()
            r.status = status
            return r
        }
        registry.serverStreaming(Health.watch) { request, sender, _ in
            var last: ServingStatus?
            for await status in await state.watch(request.service) where status != last {
                last = status
                var r = HealthCheckResponse()
                r.status = status
                try await sender.send(r)
            }
        }
    }
}
