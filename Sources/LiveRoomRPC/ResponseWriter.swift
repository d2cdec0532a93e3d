import NIOCore

/// Sends response messages on one call, waiting for flow-control credit from the peer.
public struct ResponseWriter: Sendable {
    let callID: UInt32
    let connection: NIOLoopBound<ServerConnectionHandler>
    let call: NIOLoopBound<ServerConnectionHandler.Call>

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
    public var push: PushWriter { PushWriter(call: call) }
}

/// Writes a call's response messages from the connection's event loop, for handlers that are
/// fed by callbacks (media fan-out) rather than by a task: no future, no hop, no flush per
/// message. Every method must be called on `eventLoop`.
public struct PushWriter: Sendable {
    /// The call itself (which holds its connection), not an id to look up: fan-out writes once
    /// per viewer per chunk, and every lookup and loop check adds up.
    let call: NIOLoopBound<ServerConnectionHandler.Call>

    public enum Result: Sendable, Equatable {
        case written
        /// The peer has granted no credit: keep the message and retry from `onCredit`.
        case noCredit
        /// The call is over.
        case ended
        case tooLarge
    }

    public var eventLoop: EventLoop { call.eventLoop }

    /// Writes one message if the peer has granted credit. `shared`, when many calls on this
    /// event loop send the same message, lets them share its frame.
    public func write(_ payload: RPCPayload, shared: SharedFrames? = nil) -> Result {
        let c = call.value
        return c.connection.pushWrite(payload, on: c, shared: shared, flush: false)
    }

    /// `write` then `flush`, for one message on its own.
    public func writeAndFlush(_ payload: RPCPayload, shared: SharedFrames? = nil) -> Result {
        let c = call.value
        return c.connection.pushWrite(payload, on: c, shared: shared, flush: true)
    }

    public func flush() { call.value.connection.pushFlush() }

    /// Runs `handler` (on the event loop) each time the peer grants credit; nil removes it.
    public func onCredit(_ handler: (() -> Void)?) {
        let c = call.value
        c.connection.setCreditHandler(handler, on: c)
    }

    /// Keeps the call open after its handler returns, so that a stream fed by callbacks needs
    /// no task (and its memory) while it runs. The call then ends with `end(_:)`, or when it is
    /// ended otherwise (the peer cancels or goes away, its deadline passes, the server shuts
    /// down, `CallContext.abort`): then `onEnd` is told why, once, on the event loop. Call
    /// before the handler returns; if the call is already over, `onEnd` runs at once.
    public func detach(onEnd: @escaping (RPCStatus) -> Void) {
        let c = call.value
        c.connection.detach(c, onEnd: onEnd)
    }

    /// Ends a detached call: the status goes to the peer (OK or not); `onEnd` is not called.
    public func end(_ status: RPCStatus) {
        let c = call.value
        c.connection.endDetached(c, status)
    }
}

