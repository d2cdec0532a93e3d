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
}
