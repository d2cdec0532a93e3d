import NIOCore

/// Sends response messages on one call, waiting for flow-control credit from the peer.
public struct ResponseWriter: Sendable {
    let callID: UInt32
    let connection: NIOLoopBound<ServerConnectionHandler>

    /// Sends one message. Suspends while the peer has no credit left for this call; throws
    /// `RPCStatus` (CANCELLED) once the call has ended.
    public func send(_ payload: RPCPayload) async throws {
        let connection = self.connection
        let id = callID
        try await connection.eventLoop.flatSubmit {
            connection.value.send(payload, on: id)
        }.get()
    }

    /// Sends several messages with one trip to the event loop and one flush.
    public func send(contentsOf payloads: [RPCPayload]) async throws {
        guard !payloads.isEmpty else { return }
        let connection = self.connection
        let id = callID
        try await connection.eventLoop.flatSubmit {
            connection.value.send(contentsOf: payloads, on: id)
        }.get()
    }
}
