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
    /// Bytes both ways: frames are decoded and encoded here, as in `ServerConnectionHandler`.
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    final class Call {
        let id: UInt32
        /// Streaming responses; nil for the unary fast path.
        var responses: AsyncThrowingStream<RPCPayload, Error>.Continuation?
        var unaryResponse: RPCPayload?
        let completion: Completion
        var initialMetadata = Metadata()
        var send = SendWindow()
        var receive = ReceiveWindow()
        var timer: Scheduled<Void>?
        var halfClosed = false

        init(id: UInt32, completion: Completion) {
            self.id = id
            self.completion = completion
        }
    }

    /// Where a call's outcome goes: a promise, or for a unary call the caller's continuation
    /// itself (no future, no callback in between).
    enum Completion {
        case promise(EventLoopPromise<CallOutcome>)
        case continuation(UnsafeContinuation<CallOutcome, Never>)

        func resume(_ outcome: consuming CallOutcome) {
            switch self {
            case .promise(let p): p.succeed(outcome)
            case .continuation(let c): c.resume(returning: outcome)
            }
        }
    }

    /// Held from `handlerAdded` to `handlerRemoved` only: a context holds its handler, so keeping
    /// it longer would keep every closed connection alive.
    private var context: ChannelHandlerContext?
    private var eventLoop: EventLoop!
    private var allocator = ByteBufferAllocator()
    private var decoder: NIOSingleStepByteToMessageProcessor<FrameDecoder>
    private var calls: [UInt32: Call] = [:]
    private var nextCallID: UInt32 = 1
    private var goAway: RPCStatus?
    private var pings: [UInt64: (EventLoopPromise<Void>)] = [:]
    private var nextPing: UInt64 = 1
    private var lastHeader: (path: String, metadata: Metadata, timeoutMs: Int64, bytes: ByteBuffer)?
    let maxFrameSize: Int

    init(maxFrameSize: Int) {
        self.maxFrameSize = maxFrameSize
        self.decoder = NIOSingleStepByteToMessageProcessor(FrameDecoder(maxFrameSize: maxFrameSize, expectPreface: false))
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        eventLoop = context.eventLoop
        allocator = context.channel.allocator
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        fail(all: RPCStatus(.unavailable, "the connection to the server closed"))
        self.context = nil
    }

    private func write(_ frame: Frame, promise: EventLoopPromise<Void>? = nil) {
        guard let context else {
            promise?.fail(goAway ?? RPCStatus(.unavailable, "the connection to the server closed"))
            return
        }
        FrameEncoder.write(frame, to: context, allocator: allocator, promise: promise)
    }

    // MARK: starting calls

    /// Opens a call. `request` (unary and server-streaming) is sent with END in the same flush.
    func open(path: String, metadata: Metadata, timeout: TimeAmount?, request: RPCPayload?, streaming: Bool,
              outcome: EventLoopPromise<CallOutcome>) -> Result<(UInt32, AsyncThrowingStream<RPCPayload, Error>?), RPCStatus> {
        var stream: AsyncThrowingStream<RPCPayload, Error>?
        var responses: AsyncThrowingStream<RPCPayload, Error>.Continuation?
        if streaming {
            let (s, c) = AsyncThrowingStream<RPCPayload, Error>.makeStream()
            stream = s
            responses = c
        }
        do {
            let id = try begin(path: path, metadata: metadata, timeout: timeout, request: request,
                               completion: .promise(outcome), responses: responses)
            return .success((id, stream))
        } catch {
            return .failure(error)
        }
    }

    /// Opens a unary call; `continuation` gets the outcome, failure included.
    func openUnary(path: String, metadata: Metadata, timeout: TimeAmount?, request: RPCPayload,
                   continuation: UnsafeContinuation<CallOutcome, Never>) {
        do {
            _ = try begin(path: path, metadata: metadata, timeout: timeout, request: request,
                          completion: .continuation(continuation), responses: nil)
        } catch {
            continuation.resume(returning: CallOutcome(status: error, initialMetadata: Metadata(), trailers: Metadata()))
        }
    }

    private func begin(path: String, metadata: Metadata, timeout: TimeAmount?, request: RPCPayload?, completion: Completion,
                       responses: AsyncThrowingStream<RPCPayload, Error>.Continuation?) throws(RPCStatus) -> UInt32 {
        if let goAway { throw goAway }
        if let request, request.wireLength > maxFrameSize {
            throw RPCStatus(.resourceExhausted,
                "request message of \(request.wireLength) bytes exceeds the maximum frame size of \(maxFrameSize) bytes")
        }
        let id = nextCallID
        nextCallID += 1
        let call = Call(id: id, completion: completion)
        call.responses = responses
        calls[id] = call
        let timeoutMs = timeout.map { max(1, $0.nanoseconds / 1_000_000) } ?? 0
        if let timeout {
            call.timer = eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
                self.cancel(id, RPCStatus(.deadlineExceeded, "deadline of \(timeoutMs) ms exceeded"))
            }
        }
        let b: ByteBuffer
        if let cached = lastHeader, cached.path == path, cached.timeoutMs == timeoutMs, cached.metadata == metadata {
            b = cached.bytes  // the same method and metadata again: reuse the encoding
        } else {
            var header = CallHeader()
            header.method = path
            header.metadata = metadata.entries.map { e in var m = MetadataEntry(); m.key = e.key; m.value = e.value; return m }
            header.timeoutMs = timeoutMs
            var fresh = allocator.buffer(capacity: 64)
            do {
                try header.serialize(into: &fresh)
            } catch {
                calls[id] = nil
                throw RPCStatus(.invalidArgument, "bad call metadata: \(error)")
            }
            lastHeader = (path, metadata, timeoutMs, fresh)
            b = fresh
        }
        let headers = Frame(.headers, callID: id, payload: b)
        if let request {
            call.halfClosed = true
            let frame = request.frame(callID: id, end: true)
            call.send.consume(frame)
            if request.attachment == nil && request.body.readableBytes <= FrameEncoder.copyLimit {
                // HEADERS and a small request in one buffer: a unary call is one write.
                var both = allocator.buffer(capacity: 2 * Frame.headerLength + headers.payloadLength + frame.payloadLength)
                FrameEncoder.encode(headers, into: &both)
                FrameEncoder.encode(frame, into: &both)
                context?.writeAndFlush(wrapOutboundOut(both), promise: nil)  // one trip down the pipeline
                return id
            } else {
                write(headers)
                write(frame)
            }
        } else {
            write(headers)
        }
        context?.flush()
        return id
    }


    func send(_ payload: RPCPayload, on id: UInt32, end: Bool) -> EventLoopFuture<Void> {
        guard let call = calls[id] else {
            return eventLoop.makeFailedFuture(RPCStatus(.cancelled, "the call has ended"))
        }
        guard !call.halfClosed else {
            return eventLoop.makeFailedFuture(RPCStatus(.failedPrecondition, "the call is half-closed: no more messages may be sent"))
        }
        guard payload.wireLength <= maxFrameSize else {
            return eventLoop.makeFailedFuture(RPCStatus(.resourceExhausted,
                "request message of \(payload.wireLength) bytes exceeds the maximum frame size of \(maxFrameSize) bytes"))
        }
        if end { call.halfClosed = true }
        let promise = eventLoop.makePromise(of: Void.self)
        let ready = call.send.enqueue(payload.frame(callID: id, end: end), promise)
        for w in ready { write(w.frame, promise: w.promise) }
        if !ready.isEmpty { context?.flush() }
        return promise.futureResult
    }

    func halfClose(_ id: UInt32) {
        guard let call = calls[id], !call.halfClosed else { return }
        call.halfClosed = true
        // END must follow messages still waiting for credit: queue it behind them.
        let ready = call.send.enqueue(Frame(.end, callID: id), eventLoop.makePromise())
        for w in ready { write(w.frame, promise: w.promise) }
        context?.flush()
    }

    /// Cancels from the client side: CANCEL to the server, the call fails locally with `status`.
    func cancel(_ id: UInt32, _ status: RPCStatus) {
        guard let call = calls.removeValue(forKey: id) else { return }
        write(Frame(.cancel, callID: id))
        context?.flush()
        complete(call, CallOutcome(status: status, initialMetadata: call.initialMetadata, trailers: Metadata()))
    }

    func returnCredit(_ n: Int, on id: UInt32) {
        guard let call = calls[id] else { return }
        call.receive.grant(n)
        write(.windowUpdate(callID: id, increment: n, allocator: allocator))
        context?.flush()
    }

    func ping(_ promise: EventLoopPromise<Void>) {
        if let goAway {
            promise.fail(goAway)
            return
        }
        let n = nextPing
        nextPing += 1
        pings[n] = promise
        var b = allocator.buffer(capacity: 8)
        b.writeInteger(n)
        write(Frame(.ping, callID: 0, payload: b))
        context?.flush()
    }

    // MARK: inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        do {
            try decoder.process(buffer: unwrapInboundIn(data)) { received($0) }
        } catch {
            fail(all: RPCStatus(.unavailable, "the server broke the protocol: \(error)"))
            context.close(promise: nil)
        }
    }

    private func received(_ event: FrameEvent) {
        guard case .frame(let frame) = event else {
            if case .oversized(let type, let id, let length) = event {
                let status = RPCStatus(.resourceExhausted,
                    "server sent a \(type) frame of \(length) bytes, over this client's maximum of \(maxFrameSize)")
                if calls[id] != nil { cancel(id, status) } else { fail(all: status); context?.close(promise: nil) }
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
            guard frame.payload.readableBytes > 0 else {
                // An empty STATUS payload is OK with nothing else: nothing to decode.
                complete(call, CallOutcome(status: .ok, initialMetadata: call.initialMetadata, trailers: Metadata()))
                return
            }
            let s = (try? CallStatus(buffer: frame.payload)) ?? {
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
            for w in call.send.grant(Int(n)) { write(w.frame, promise: w.promise) }
            context?.flush()
        case .ping:
            write(Frame(.pong, callID: 0, payload: frame.payload))
            context?.flush()
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

    /// `outcome` is consumed: it is handed on, not copied (a copy retains each of its parts).
    private func complete(_ call: Call, _ outcome: consuming CallOutcome) {
        call.timer?.cancel()
        call.send.fail(outcome.status)
        if let responses = call.responses {
            if outcome.status.code == .ok { responses.finish() } else { responses.finish(throwing: outcome.status) }
        }
        if outcome.status.code == .ok, let response = call.unaryResponse.take() { outcome.unaryResponse = response }
        call.completion.resume(outcome)
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
