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

extension ResponseWriter {
    /// The same call, written from its event loop without a task per message.
    public var push: PushWriter { PushWriter(callID: callID, connection: connection) }
}

/// Writes a call's response messages from the connection's event loop, for handlers that are
/// fed by callbacks (media fan-out) rather than by a task: no future, no hop, no flush per
/// message. Every method must be called on `eventLoop`.
public struct PushWriter: Sendable {
    let callID: UInt32
    let connection: NIOLoopBound<ServerConnectionHandler>

    public enum Result: Sendable, Equatable {
        case written
        /// The peer has granted no credit: keep the message and retry from `onCredit`.
        case noCredit
        /// The call is over.
        case ended
        case tooLarge
    }

    public var eventLoop: EventLoop { connection.eventLoop }

    public func write(_ payload: RPCPayload) -> Result { connection.value.pushWrite(payload, on: callID) }

    public func flush() { connection.value.pushFlush() }

    /// Runs `handler` (on the event loop) each time the peer grants credit; nil removes it.
    public func onCredit(_ handler: (() -> Void)?) { connection.value.setCreditHandler(handler, on: callID) }
}
