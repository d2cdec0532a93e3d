import LiveRoomMessages
import NIOCore

/// What a call ended with, from the client's side.
public struct CallOutcome: Sendable {
    public var status: RPCStatus
    public var initialMetadata: Metadata
    public var trailers: Metadata
    var unaryResponse: RPCPayload? = nil
}

/// Sends the connection preface once the connection is up. Sits at the head of the pipeline,
/// below the frame encoder, because the preface is not a frame.
final class PrefaceWriter: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func channelActive(context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: Frame.preface)), promise: nil)
        context.fireChannelActive()
    }
}

/// Client-side call multiplexer for one connection. Runs on the channel's event loop.
final class ClientConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = FrameEvent
    typealias OutboundOut = Frame

    final class Call {
        let id: UInt32
        /// Streaming responses; nil for the unary fast path.
        var responses: AsyncThrowingStream<RPCPayload, Error>.Continuation?
        var unaryResponse: RPCPayload?
        let outcome: EventLoopPromise<CallOutcome>
        var initialMetadata = Metadata()
        var send = SendWindow()
        var receive = ReceiveWindow()
        var timer: Scheduled<Void>?
        var halfClosed = false

        init(id: UInt32, outcome: EventLoopPromise<CallOutcome>) {
            self.id = id
            self.outcome = outcome
        }
    }

    private var context: ChannelHandlerContext!
    private var calls: [UInt32: Call] = [:]
    private var nextCallID: UInt32 = 1
    private var goAway: RPCStatus?
    private var pings: [UInt64: (EventLoopPromise<Void>)] = [:]
    private var nextPing: UInt64 = 1
    private var lastHeader: (header: CallHeader, bytes: ByteBuffer)?
    let maxFrameSize: Int

    init(maxFrameSize: Int) { self.maxFrameSize = maxFrameSize }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    // MARK: starting calls

    /// Opens a call. `request` (unary and server-streaming) is sent with END in the same flush.
    func open(path: String, metadata: Metadata, timeout: TimeAmount?, request: RPCPayload?, streaming: Bool,
              outcome: EventLoopPromise<CallOutcome>) -> Result<(UInt32, AsyncThrowingStream<RPCPayload, Error>?), RPCStatus> {
        if let goAway { return .failure(goAway) }
        if let request, request.wireLength > maxFrameSize {
            return .failure(RPCStatus(.resourceExhausted,
                "request message of \(request.wireLength) bytes exceeds the maximum frame size of \(maxFrameSize) bytes"))
        }
        let id = nextCallID
        nextCallID += 1
        let call = Call(id: id, outcome: outcome)
        var stream: AsyncThrowingStream<RPCPayload, Error>?
        if streaming {
            let (s, c) = AsyncThrowingStream<RPCPayload, Error>.makeStream()
            stream = s
            call.responses = c
        }
        calls[id] = call
        var header = CallHeader()
        header.method = path
        header.metadata = metadata.entries.map { e in var m = MetadataEntry(); m.key = e.key; m.value = e.value; return m }
        if let timeout {
            header.timeoutMs = max(1, timeout.nanoseconds / 1_000_000)
            call.timer = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
                self.cancel(id, RPCStatus(.deadlineExceeded, "deadline of \(header.timeoutMs) ms exceeded"))
            }
        }
        let b: ByteBuffer
        if let cached = lastHeader, cached.header == header {
            b = cached.bytes  // the same method and metadata again: reuse the encoding
        } else {
            var fresh = context.channel.allocator.buffer(capacity: 64)
            do {
                try header.serialize(into: &fresh)
            } catch {
                calls[id] = nil
                return .failure(RPCStatus(.invalidArgument, "bad call metadata: \(error)"))
            }
            lastHeader = (header, fresh)
            b = fresh
        }
        context.write(wrapOutboundOut(Frame(.headers, callID: id, payload: b)), promise: nil)
        if let request {
            call.halfClosed = true
            let frame = request.frame(callID: id, end: true)
            call.send.consume(frame)
            context.write(wrapOutboundOut(frame), promise: nil)
        }
        context.flush()
        return .success((id, stream))
    }

    /// Opens a unary call; `outcome` carries the response or the failure.
    func openUnary(path: String, metadata: Metadata, timeout: TimeAmount?, request: RPCPayload, outcome: EventLoopPromise<CallOutcome>) {
        if case .failure(let status) = open(path: path, metadata: metadata, timeout: timeout, request: request, streaming: false, outcome: outcome) {
            outcome.fail(status)
        }
    }


    func send(_ payload: RPCPayload, on id: UInt32, end: Bool) -> EventLoopFuture<Void> {
        guard let call = calls[id] else {
            return context.eventLoop.makeFailedFuture(RPCStatus(.cancelled, "the call has ended"))
        }
        guard !call.halfClosed else {
            return context.eventLoop.makeFailedFuture(RPCStatus(.failedPrecondition, "the call is half-closed: no more messages may be sent"))
        }
        guard payload.wireLength <= maxFrameSize else {
            return context.eventLoop.makeFailedFuture(RPCStatus(.resourceExhausted,
                "request message of \(payload.wireLength) bytes exceeds the maximum frame size of \(maxFrameSize) bytes"))
        }
        if end { call.halfClosed = true }
        let promise = context.eventLoop.makePromise(of: Void.self)
        let ready = call.send.enqueue(payload.frame(callID: id, end: end), promise)
        for w in ready { context.write(wrapOutboundOut(w.frame), promise: w.promise) }
        if !ready.isEmpty { context.flush() }
        return promise.futureResult
    }

    func halfClose(_ id: UInt32) {
        guard let call = calls[id], !call.halfClosed else { return }
        call.halfClosed = true
        // END must follow messages still waiting for credit: queue it behind them.
        let ready = call.send.enqueue(Frame(.end, callID: id), context.eventLoop.makePromise())
        for w in ready { context.write(wrapOutboundOut(w.frame), promise: w.promise) }
        context.flush()
    }

    /// Cancels from the client side: CANCEL to the server, the call fails locally with `status`.
    func cancel(_ id: UInt32, _ status: RPCStatus) {
        guard let call = calls.removeValue(forKey: id) else { return }
        context.writeAndFlush(wrapOutboundOut(Frame(.cancel, callID: id)), promise: nil)
        complete(call, CallOutcome(status: status, initialMetadata: call.initialMetadata, trailers: Metadata()))
    }

    func returnCredit(_ n: Int, on id: UInt32) {
        guard let call = calls[id] else { return }
        call.receive.grant(n)
        context.writeAndFlush(wrapOutboundOut(.windowUpdate(callID: id, increment: n, allocator: context.channel.allocator)), promise: nil)
    }

    func ping(_ promise: EventLoopPromise<Void>) {
        let n = nextPing
        nextPing += 1
        pings[n] = promise
        var b = context.channel.allocator.buffer(capacity: 8)
        b.writeInteger(n)
        context.writeAndFlush(wrapOutboundOut(Frame(.ping, callID: 0, payload: b)), promise: nil)
    }

    // MARK: inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .frame(let frame) = unwrapInboundIn(data) else {
            if case .oversized(let type, let id, let length) = unwrapInboundIn(data) {
                let status = RPCStatus(.resourceExhausted,
                    "server sent a \(type) frame of \(length) bytes, over this client's maximum of \(maxFrameSize)")
                if calls[id] != nil { cancel(id, status) } else { fail(all: status); context.close(promise: nil) }
            }
            return
        }
        switch frame.type {
        case .headers:
            guard let call = calls[frame.callID], let h = try? ResponseHeader(buffer: frame.payload) else { return }
            for e in h.metadata { call.initialMetadata.add(e.key, e.value) }
        case .message:
            guard let call = calls[frame.callID] else { return }
            guard call.receive.receive(frame.payloadLength) else {
                cancel(call.id, RPCStatus(.resourceExhausted, "server sent past its flow-control window"))
                return
            }
            let payload: RPCPayload
            do { payload = try RPCPayload(frame: frame) } catch {
                cancel(call.id, RPCStatus(.internal, "server sent a malformed MESSAGE frame: \(error)"))
                return
            }
            if let responses = call.responses {
                responses.yield(payload)
            } else if call.unaryResponse == nil {
                call.unaryResponse = payload
            } else {
                cancel(call.id, RPCStatus(.internal, "server sent more than one response on a unary call"))
            }
        case .status:
            guard let call = calls.removeValue(forKey: frame.callID) else { return }
            // An empty STATUS payload is OK with nothing else: skip the decoder.
            let s = frame.payload.readableBytes == 0 ? CallStatus() : (try? CallStatus(buffer: frame.payload)) ?? {
                var bad = CallStatus()
                bad.code = RPCStatus.Code.internal.rawValue
                bad.message = "server sent a malformed STATUS frame"
                return bad
            }()
            var trailers = Metadata()
            for e in s.trailers { trailers.add(e.key, e.value) }
            let status = RPCStatus(RPCStatus.Code(rawValue: s.code), s.message, details: Array(s.details.readableBytesView))
            complete(call, CallOutcome(status: status, initialMetadata: call.initialMetadata, trailers: trailers))
        case .windowUpdate:
            var p = frame.payload
            guard let n = p.readInteger(as: UInt32.self), let call = calls[frame.callID] else { return }
            for w in call.send.grant(Int(n)) { context.write(wrapOutboundOut(w.frame), promise: w.promise) }
            context.flush()
        case .ping:
            context.writeAndFlush(wrapOutboundOut(Frame(.pong, callID: 0, payload: frame.payload)), promise: nil)
        case .pong:
            var p = frame.payload
            if let n = p.readInteger(as: UInt64.self), let promise = pings.removeValue(forKey: n) { promise.succeed() }
        case .goAway:
            let g = try? GoAway(buffer: frame.payload)
            let message = g?.message ?? "server sent GOAWAY"
            goAway = RPCStatus(.unavailable, "connection is closing (\(message)); open a new connection")
            let last = g?.lastCallId ?? 0
            for (id, call) in calls where id > last {
                calls[id] = nil
                complete(call, CallOutcome(status: goAway!, initialMetadata: Metadata(), trailers: Metadata()))
            }
        default:
            break
        }
    }

    private func complete(_ call: Call, _ outcome: CallOutcome) {
        call.timer?.cancel()
        call.send.fail(outcome.status)
        if let responses = call.responses {
            if outcome.status.code == .ok { responses.finish() } else { responses.finish(throwing: outcome.status) }
        }
        var outcome = outcome
        if outcome.status.code == .ok { outcome.unaryResponse = call.unaryResponse }
        call.outcome.succeed(outcome)
    }

    private func fail(all status: RPCStatus) {
        let all = calls.values
        calls.removeAll()
        for call in all { complete(call, CallOutcome(status: status, initialMetadata: call.initialMetadata, trailers: Metadata())) }
        for p in pings.values { p.fail(status) }
        pings.removeAll()
        if goAway == nil { goAway = status }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        fail(all: RPCStatus(.unavailable, "connection error: \(error)"))
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(all: RPCStatus(.unavailable, "the connection to the server closed"))
        context.fireChannelInactive()
    }
}
