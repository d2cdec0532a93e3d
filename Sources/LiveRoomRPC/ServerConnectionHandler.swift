import LiveRoomCodec
import LiveRoomMessages
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras

/// Server-side call multiplexer for one connection: opens calls from HEADERS frames, routes
/// their messages, runs each call's handler in its own task, enforces deadlines, flow control
/// and limits, and drains on graceful shutdown. Everything here runs on the channel's event loop.
final class ServerConnectionHandler: ChannelInboundHandler {
    /// Bytes: frames are decoded here, not by a decoder handler before this one, because a
    /// decoded `Frame` is too big for `NIOAny` and each one passed up the pipeline was boxed.
    typealias InboundIn = ByteBuffer
    /// Frames are encoded here rather than by a FrameEncoder further down: a `Frame` is too big
    /// for `NIOAny`'s inline storage, and boxing one per write showed in fan-out profiles.
    typealias OutboundOut = ByteBuffer

    struct Limits {
        var maxFrameSize: Int
        var maxConcurrentCalls: Int
        var gracePeriod: TimeAmount
        var untrusted = UntrustedBudget()
        var stalledPeerTimeout: TimeAmount = .seconds(30)
    }

    final class Call {
        let id: UInt32
        let entry: ServiceRegistry.Entry
        let context: CallContext
        var continuation: AsyncThrowingStream<RPCPayload, Error>.Continuation?
        var single: RPCPayload?
        var singleCount = 0
        var task: Task<Void, Never>?
        var send = SendWindow()
        var receive = ReceiveWindow()
        var deadlineTimer: Scheduled<Void>?
        var sentInitialMetadata = false
        let startedAt: NIODeadline?
        /// Push mode: runs when the peer grants credit.
        var onCredit: (() -> Void)?
        /// Set when the call leaves `calls`, for writers that hold the call itself.
        var ended = false
        /// A detached call outlives its handler: it ends by `endDetached`, or from this side
        /// or the peer's, when `onEnd` is told why.
        var detached = false
        var onEnd: ((RPCStatus) -> Void)?

        /// Held by the call so that a `PushWriter` reaches both with one loop check. The cycle is
        /// broken when the call leaves `calls`, which every call does (shutdown removes them all).
        let connection: ServerConnectionHandler

        init(id: UInt32, entry: ServiceRegistry.Entry, context: CallContext, timed: Bool, connection: ServerConnectionHandler) {
            self.id = id
            self.connection = connection
            self.entry = entry
            self.context = context
            self.startedAt = timed ? .now() : nil
        }

        var streamsRequests: Bool { entry.info.kind == .clientStreaming || entry.info.kind == .bidirectional }
    }

    private var decoder: NIOSingleStepByteToMessageProcessor<FrameDecoder>
    private let registry: ServiceRegistry
    private let limits: Limits
    private let transport: Transport
    private let authenticate: (@Sendable (CallContext) -> Admission)?
    /// Set while this connection is untrusted and holds one of the server's untrusted places.
    private var untrustedCount: UntrustedCount?
    private var trusted: Bool { untrustedCount == nil }
    private var idleTimer: Scheduled<Void>?
    /// Set when the connection is to be sent a GOAWAY and closed as soon as it is active.
    private var refusal: (code: RPCStatus.Code, message: String)?
    private var stallTimer: Scheduled<Void>?
    private let metrics: RPCMetrics?
    private var logger: Logger
    /// Held from `handlerAdded` to `handlerRemoved` only: a context holds its handler, so keeping
    /// it longer would keep every closed connection alive.
    private var context: ChannelHandlerContext?
    private var eventLoop: EventLoop!
    /// Kept from `handlerAdded`: reaching it through the context costs a few reference counts
    /// per write, which fan-out pays a thousand times per chunk.
    private var allocator = ByteBufferAllocator()
    private var unflushed = false
    private var calls: [UInt32: Call] = [:]
    private var lastCallID: UInt32 = 0
    /// The last valid HEADERS payload, decoded: most connections call the same method repeatedly.
    private var lastHeader: KnownHeader?
    private var draining = false
    private var closed = false
    private var peer = "?"
    /// Handed to every call's context; set when the handler joins the channel.
    private var shared: ConnectionShared!
    private var graceTimer: Scheduled<Void>?

    /// A decoded HEADERS payload with its method looked up. A class: reusing one costs one
    /// reference count, not one per field.
    final class KnownHeader {
        let bytes: ByteBuffer
        let method: String
        let timeoutMs: Int64
        let entry: ServiceRegistry.Entry
        let metadata: Metadata
        /// What the authenticator said of these exact headers on this connection (never a refusal).
        var admission: Admission?

        init(bytes: ByteBuffer, method: String, timeoutMs: Int64, entry: ServiceRegistry.Entry, metadata: Metadata) {
            (self.bytes, self.method, self.timeoutMs, self.entry, self.metadata) = (bytes, method, timeoutMs, entry, metadata)
        }
    }

    init(registry: ServiceRegistry, limits: Limits, transport: Transport,
         authenticate: (@Sendable (CallContext) -> Admission)?, untrusted: UntrustedCount? = nil,
         metrics: RPCMetrics? = nil, logger: Logger) {
        self.untrustedCount = untrusted
        self.decoder = NIOSingleStepByteToMessageProcessor(FrameDecoder(maxFrameSize: limits.maxFrameSize, expectPreface: true))
        self.registry = registry
        self.limits = limits
        self.transport = transport
        self.authenticate = authenticate
        self.metrics = metrics
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        eventLoop = context.eventLoop
        allocator = context.channel.allocator
        peer = context.channel.remoteAddress.map { "\($0)" } ?? transport.rawValue
        logger[metadataKey: "peer"] = "\(peer)"
        shared = ConnectionShared(transport: transport, peer: peer, logger: logger, maxFrameSize: limits.maxFrameSize,
                                  connection: NIOLoopBound(self, eventLoop: context.eventLoop))
        if refusal == nil, let untrustedCount {
            guard untrustedCount.enter() else {
                self.untrustedCount = nil  // holds no place
                logger.info("closing: too many connections without credentials (limit \(untrustedCount.limit))")
                refusal = (.resourceExhausted,
                           "too many connections without credentials (limit \(untrustedCount.limit)); present a token or retry later")
                if context.channel.isActive { refuseNow() }
                return
            }
            armIdleTimer()
        } else if refusal != nil {
            untrustedCount = nil
            if context.channel.isActive { refuseNow() }
        }
    }

    /// A connection made while the server drains: it is told so, then closed.
    func refuseAsShuttingDown() {
        refusal = (.unavailable, "server is shutting down; connect again later (or to another instance)")
    }

    func channelActive(context: ChannelHandlerContext) {
        if refusal != nil { refuseNow() }
        context.fireChannelActive()
    }

    private func refuseNow() {
        guard let (code, message) = refusal, !closed else { return }
        writeGoAway(code: code, message)
        closed = true
        context?.close(promise: nil)
    }

    /// The connection is now trusted: its untrusted place is given back and no idle timer runs.
    private func becomeTrusted() {
        untrustedCount?.leave()
        untrustedCount = nil
        idleTimer?.cancel()
        idleTimer = nil
    }

    /// Untrusted connections with no call open are closed after the idle timeout (from connect,
    /// this is the preface timeout too).
    private func armIdleTimer() {
        guard !trusted, calls.isEmpty, !closed else { return }
        idleTimer?.cancel()
        let timeout = limits.untrusted.idleTimeout
        idleTimer = eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
            guard !trusted, calls.isEmpty, !closed else { return }
            logger.debug("closing an idle connection without credentials")
            writeGoAway(code: .ok, "idle for \(timeout.nanoseconds / 1_000_000_000) s without a call or credentials")
            closed = true
            context?.close(promise: nil)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            stallTimer?.cancel()
            stallTimer = nil
            // Push-mode calls paused on the connection; each tries again.
            for call in calls.values { call.onCredit?() }
        } else if stallTimer == nil {
            let timeout = limits.stalledPeerTimeout
            stallTimer = eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
                stallTimer = nil
                guard let context = self.context, !context.channel.isWritable else { return }
                logger.info("closing: the peer has taken nothing written to it for \(timeout.nanoseconds / 1_000_000_000) s")
                shutdown(RPCStatus(.unavailable, "the peer stopped reading"))
                context.close(promise: nil)
            }
        }
        context.fireChannelWritabilityChanged()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        untrustedCount?.leave()
        untrustedCount = nil
        idleTimer?.cancel()
        stallTimer?.cancel()
        // Both refer back to this handler: the cycles end with the connection.
        closed = true
        shared = nil
        self.context = nil
    }

    // MARK: inbound frames

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !closed else { return }  // after a protocol error, the rest is not read
        do {
            try decoder.process(buffer: unwrapInboundIn(data)) { event in
                if !closed { received(event) }
            }
        } catch let error as FrameError {
            connectionError(error)
        } catch {
            connectionError(FrameError("\(error)"))
        }
    }

    private func received(_ event: FrameEvent) {
        switch event {
        case .frame(let frame):
            handle(frame)
        case .oversized(let type, let id, let length):
            let status = RPCStatus(.resourceExhausted,
                "\(type) frame of \(length) bytes exceeds the maximum frame size of \(limits.maxFrameSize) bytes"
                    + (type == .headers ? ": the call was refused" : ""))
            if type == .headers {
                if id > lastCallID { lastCallID = id }
                refuse(id, status)
            } else if type == .message, calls[id] != nil {
                abort(id, status)
            } else if type != .message {
                connectionError(FrameError("\(status.message) on call \(id)"))
            }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        // Writes made while reading (credit, PONG) that nothing flushed yet.
        if unflushed { flush() }
    }

    private func flush() {
        unflushed = false
        context?.flush()
    }

    private func handle(_ frame: Frame) {
        switch frame.type {
        case .headers: open(frame)
        case .message: message(frame)
        case .end: end(frame.callID)
        case .cancel: cancelled(frame.callID)
        case .windowUpdate:
            var p = frame.payload
            guard let n = p.readInteger(as: UInt32.self), let call = calls[frame.callID] else { return }
            for w in call.send.grant(Int(n)) { write(w.frame, promise: w.promise) }
            call.onCredit?()
        case .ping:
            write(Frame(.pong, callID: frame.callID, payload: frame.payload), promise: nil)
        default:
            break  // PONG, GOAWAY and unknown types are ignored, as extensions may add frame types
        }
    }

    private func open(_ frame: Frame) {
        let id = frame.callID
        guard id > lastCallID else {
            connectionError(FrameError(id == 0 ? "call id 0 is reserved for the connection: call ids start at 1"
                : "call id \(id) is not greater than the previous call id \(lastCallID)"))
            return
        }
        lastCallID = id
        if draining {
            refuse(id, RPCStatus(.unavailable, "server is shutting down; retry on a new connection"))
            return
        }
        guard calls.count < limits.maxConcurrentCalls else {
            refuse(id, RPCStatus(.resourceExhausted,
                "too many concurrent calls on this connection (limit \(limits.maxConcurrentCalls))"))
            return
        }
        let known: KnownHeader
        if let last = lastHeader, last.bytes == frame.payload {
            // The same method, metadata and timeout as the previous call (a client calling one
            // method again and again): no decoding, no lookup.
            known = last
        } else {
            let header: CallHeader
            do {
                header = try CallHeader(buffer: frame.payload)
            } catch {
                refuse(id, RPCStatus(.invalidArgument, "HEADERS payload is not a valid liveroom.rpc.v1.CallHeader: \(error)"))
                return
            }
            guard let found = registry.entry(for: header.method) else {
                refuse(id, RPCStatus(.unimplemented, "unknown method \(RPCStatus.quote(header.method))"))
                return
            }
            guard header.timeoutMs >= 0 else {
                refuse(id, RPCStatus(.invalidArgument, "timeout_ms must not be negative, got \(header.timeoutMs)"), method: header.method)
                return
            }
            var m = Metadata()
            for e in header.metadata { m.add(e.key, e.value) }
            // A copy: holding a slice would pin the whole read buffer.
            known = KnownHeader(bytes: ByteBuffer(buffer: frame.payload), method: header.method,
                                timeoutMs: header.timeoutMs, entry: found, metadata: m)
            lastHeader = known
        }
        // Capped: a timeout of years would overflow the clock's nanoseconds.
        let deadline = known.timeoutMs > 0 ? NIODeadline.now() + .milliseconds(min(known.timeoutMs, Self.maxTimeoutMs)) : nil
        let ctx = CallContext(callID: id, path: known.method, metadata: known.metadata, deadline: deadline, shared: shared)
        if let authenticate {
            let admission: Admission
            if let cached = known.admission {
                admission = cached
            } else {
                admission = authenticate(ctx)
                if case .refused(let status) = admission {
                    refuse(id, status, method: known.method)
                    return
                }
                known.admission = admission
            }
            if admission == .trusted {
                if !trusted { becomeTrusted() }
            } else if !trusted && calls.count >= limits.untrusted.maxConcurrentCalls {
                refuse(id, RPCStatus(.resourceExhausted,
                    "at most \(limits.untrusted.maxConcurrentCalls) calls may be open on a connection without credentials"),
                    method: known.method)
                return
            }
        }
        idleTimer?.cancel()
        idleTimer = nil
        let entry = known.entry
        let call = Call(id: id, entry: entry, context: ctx, timed: metrics != nil, connection: self)
        calls[id] = call
        if let deadline {
            call.deadlineTimer = eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
                abort(id, RPCStatus(.deadlineExceeded, "deadline of \(known.timeoutMs) ms exceeded"))
            }
        }
        if call.streamsRequests {
            let (stream, continuation) = AsyncThrowingStream<RPCPayload, Error>.makeStream()
            call.continuation = continuation
            let loop = shared.connection
            start(call, MessageStream(source: .stream(stream, { n in
                loop.eventLoop.execute { loop.value.returnCredit(n, on: id) }
            })))
            if frame.flags.contains(.endStream) { continuation.finish() }
        } else if frame.flags.contains(.endStream) {
            end(id)
        }
    }

    /// 100 days: longer timeouts are taken as this.
    static let maxTimeoutMs: Int64 = 100 * 24 * 3_600_000

    /// Ends a call that never started (refused at HEADERS), counting it.
    private func refuse(_ id: UInt32, _ status: RPCStatus, method: String = "unknown") {
        metrics?.callEnded(method: method, code: status.code, startedAt: nil)
        writeStatus(id, status, trailers: Metadata())
    }

    private func message(_ frame: Frame) {
        guard let call = calls[frame.callID] else { return }  // the call ended; the peer had not heard yet
        guard call.receive.receive(frame.payloadLength) else {
            abort(call.id, RPCStatus(.resourceExhausted, "peer sent past its flow-control window"))
            return
        }
        let payload: RPCPayload
        do {
            payload = try RPCPayload(frame: frame)
        } catch {
            abort(call.id, error as? RPCStatus ?? RPCStatus(.invalidArgument, "\(error)"))
            return
        }
        if let continuation = call.continuation {
            continuation.yield(payload)
            if frame.flags.contains(.endStream) { continuation.finish() }
        } else {
            call.singleCount += 1
            call.single = payload
            if frame.flags.contains(.endStream) { end(call.id) }
        }
    }

    private func end(_ id: UInt32) {
        guard let call = calls[id] else { return }
        if let continuation = call.continuation {
            continuation.finish()
            return
        }
        guard call.task == nil else { return }
        guard call.singleCount == 1, let request = call.single else {
            abort(id, RPCStatus(.invalidArgument,
                "\(call.entry.info.kind.rawValue) method \(call.context.path) takes exactly one request message, got \(call.singleCount)"))
            return
        }
        call.single = nil
        start(call, MessageStream(source: .single(request)))
    }

    private func cancelled(_ id: UInt32) {
        guard let call = calls.removeValue(forKey: id) else { return }
        call.context.logger.debug("cancelled by the client")
        teardown(call, RPCStatus(.cancelled, "cancelled by the client"))
        closeIfDrained()
    }

    func returnCredit(_ n: Int, on id: UInt32) {
        guard let call = calls[id], !closed else { return }
        call.receive.grant(n)
        write(.windowUpdate(callID: id, increment: n, allocator: allocator), promise: nil)
        flush()
    }

    // MARK: running handlers

    private func start(_ call: Call, _ requests: MessageStream) {
        let loop = shared.connection  // made once per connection
        let serverCall = ServerCall(context: call.context, requests: requests,
                                    responses: ResponseWriter(callID: call.id, connection: loop,
                                                              call: NIOLoopBound(call, eventLoop: eventLoop)))
        let handler = call.entry.handler
        let id = call.id
        // Runs the handler here, on the event loop, until its first suspension: a unary handler
        // that does not wait is answered within this read, with no trip through a scheduler.
        let deadline = call.context.deadline
        call.task = Task.immediate {
            let result: Result<RPCPayload?, Error>
            do {
                if let deadline {
                    result = .success(try await CallDeadline.$current.withValue(deadline) { try await handler(serverCall) })
                } else {
                    result = .success(try await handler(serverCall))
                }
            } catch {
                result = .failure(error)
            }
            if loop.eventLoop.inEventLoop {
                loop.value.finished(id, result)
            } else {
                loop.eventLoop.execute { loop.value.finished(id, result) }
            }
        }
    }

    private func finished(_ id: UInt32, _ result: Result<RPCPayload?, Error>) {
        if let call = calls[id], call.detached, case .success = result {
            call.task = nil
            return
        }
        guard let call = calls.removeValue(forKey: id) else { return }
        call.task = nil  // it is finishing: nothing to cancel
        let status: RPCStatus
        var message: RPCPayload?
        switch result {
        case .success(let last):
            message = last
            status = .ok
        case .failure(let error as RPCStatus):
            status = error
        case .failure(is CancellationError):
            status = RPCStatus(.cancelled, "the call was cancelled")
        case .failure(let error as ProtoError):
            status = RPCStatus(.internal, "could not encode the response: \(error)")
        case .failure(let error):
            call.context.logger.error("handler failed: \(error)")
            status = RPCStatus(.unknown, "\(error)")
        }
        if status.code != .ok { call.context.logger.debug("ended with \(status)") }
        teardown(call, status)
        writeStatus(call, status, after: message, flushing: true)
        closeIfDrained()
    }

    func abortCall(_ id: UInt32, _ status: RPCStatus) {
        abort(id, status)
    }

    /// Ends a call from this side (deadline, violation, shutdown): status to the peer, handler cancelled.
    private func abort(_ id: UInt32, _ status: RPCStatus) {
        guard let call = calls.removeValue(forKey: id) else { return }
        call.context.logger.debug("aborted: \(status)")
        writeStatus(call, status)
        teardown(call, status)
        flush()
        closeIfDrained()
    }

    /// Keeps `call` open after its handler returns (see `PushWriter.detach`).
    func detach(_ call: Call, onEnd: @escaping (RPCStatus) -> Void) {
        guard !call.ended else {
            onEnd(RPCStatus(.cancelled, "the call has ended"))
            return
        }
        call.detached = true
        call.onEnd = onEnd
    }

    /// Ends a detached call with `status`, as its handler's return would have.
    func endDetached(_ call: Call, _ status: RPCStatus) {
        guard !call.ended, calls.removeValue(forKey: call.id) != nil else { return }
        call.onEnd = nil
        if status.code != .ok { call.context.logger.debug("ended with \(status)") }
        writeStatus(call, status)
        teardown(call, status)
        flush()
        closeIfDrained()
    }

    private func teardown(_ call: Call, _ status: RPCStatus) {
        metrics?.callEnded(method: call.context.path, code: status.code, startedAt: call.startedAt)
        call.ended = true
        if let onEnd = call.onEnd {
            call.onEnd = nil
            onEnd(status)
        }
        call.deadlineTimer?.cancel()
        call.task?.cancel()
        call.onCredit = nil
        call.continuation?.finish(throwing: status)
        call.send.fail(RPCStatus(.cancelled, "the call has ended: \(status)"))
    }

    // MARK: writing

    func send(_ payload: RPCPayload, on id: UInt32) -> EventLoopFuture<Void> {
        guard let call = calls[id], !closed else {
            return eventLoop.makeFailedFuture(RPCStatus(.cancelled, "the call has ended"))
        }
        guard payload.wireLength <= limits.maxFrameSize else {
            return eventLoop.makeFailedFuture(RPCStatus(.resourceExhausted,
                "response message of \(payload.wireLength) bytes exceeds the maximum frame size of \(limits.maxFrameSize) bytes"))
        }
        writeInitialMetadataIfNeeded(call)
        let promise = eventLoop.makePromise(of: Void.self)
        let ready = call.send.enqueue(payload.frame(callID: id), promise)
        for w in ready { write(w.frame, promise: w.promise) }
        if !ready.isEmpty { flush() }
        return promise.futureResult
    }

    /// Push mode: writes now if the call has credit, else leaves the message to the caller, who
    /// tries again from its credit handler. Does not flush. No promise, no queue: the caller's
    /// own bounded queue is the only buffer.
    func pushWrite(_ payload: RPCPayload, on call: Call, shared: SharedFrames?, flush flushing: Bool) -> PushWriter.Result {
        guard !call.ended, !closed else { return .ended }
        guard payload.wireLength <= limits.maxFrameSize else { return .tooLarge }
        // A peer that is not taking what was written gets no more: the caller keeps the message
        // and retries from its credit handler, which runs again once the connection drains.
        guard let context, context.channel.isWritable else { return .noCredit }
        let frame = payload.frame(callID: call.id)
        guard call.send.take(frame) else { return .noCredit }
        writeInitialMetadataIfNeeded(call)
        if let whole = shared?.frame(payload, callID: call.id, allocator: allocator) {
            if flushing {
                // One trip down the pipeline for both.
                unflushed = false
                context.writeAndFlush(wrapOutboundOut(whole), promise: nil)
                return .written
            }
            unflushed = true
            context.write(wrapOutboundOut(whole), promise: nil)
        } else {
            write(frame, promise: nil)
        }
        if flushing { flush() }
        return .written
    }

    func pushFlush() { if !closed { flush() } }

    func setCreditHandler(_ handler: (() -> Void)?, on call: Call) {
        if !call.ended { call.onCredit = handler }
    }

    /// Queues every payload behind the call's flow-control window; the future completes when
    /// the last one has been written.
    func send(contentsOf payloads: [RPCPayload], on id: UInt32) -> EventLoopFuture<Void> {
        guard let call = calls[id], !closed else {
            return eventLoop.makeFailedFuture(RPCStatus(.cancelled, "the call has ended"))
        }
        if let big = payloads.first(where: { $0.wireLength > limits.maxFrameSize }) {
            return eventLoop.makeFailedFuture(RPCStatus(.resourceExhausted,
                "response message of \(big.wireLength) bytes exceeds the maximum frame size of \(limits.maxFrameSize) bytes"))
        }
        writeInitialMetadataIfNeeded(call)
        var last: EventLoopFuture<Void> = eventLoop.makeSucceededVoidFuture()
        var wrote = false
        for payload in payloads {
            let promise = eventLoop.makePromise(of: Void.self)
            last = promise.futureResult
            for w in call.send.enqueue(payload.frame(callID: id), promise) {
                write(w.frame, promise: w.promise)
                wrote = true
            }
        }
        if wrote { flush() }
        return last
    }

    private func write(_ frame: Frame, promise: EventLoopPromise<Void>?) {
        guard let context else {
            promise?.fail(RPCStatus(.unavailable, "the connection has closed"))
            return
        }
        unflushed = true
        FrameEncoder.write(frame, to: context, allocator: allocator, promise: promise)
    }


    private func writeInitialMetadataIfNeeded(_ call: Call) {
        guard !call.sentInitialMetadata else { return }
        call.sentInitialMetadata = true
        let initial = call.context.withResponseMetadata { $0.initial }
        guard !initial.isEmpty else { return }
        var header = ResponseHeader()
        header.metadata = initial.entries.map { e in var m = MetadataEntry(); m.key = e.key; m.value = e.value; return m }
        var b = allocator.buffer(capacity: 64)
        try? header.serialize(into: &b)
        write(Frame(.headers, callID: call.id, payload: b), promise: nil)
    }

    /// Writes the status, after a last response message if there is one (a unary or client-
    /// streaming response): a small one goes in the same buffer, so a unary answer is one write.
    /// `flushing` flushes too (with the write when it is one buffer: one trip down the pipeline).
    private func writeStatus(_ call: Call, _ status: RPCStatus, after message: RPCPayload? = nil, flushing: Bool = false) {
        guard !closed else { return }
        writeInitialMetadataIfNeeded(call)
        var status = status
        if let message, message.wireLength > limits.maxFrameSize {
            call.context.logger.error("response of \(message.wireLength) bytes exceeds the maximum frame size of \(limits.maxFrameSize) bytes")
            status = RPCStatus(.resourceExhausted,
                "the response of \(message.wireLength) bytes exceeds the maximum frame size of \(limits.maxFrameSize) bytes; ask for less (a smaller page)")
        }
        let statusFrame = self.statusFrame(call.id, status, trailers: call.context.withResponseMetadata { $0.trailers })
        guard let message, message.wireLength <= limits.maxFrameSize else {
            write(statusFrame, promise: nil)
            if flushing { flush() }
            return
        }
        let frame = message.frame(callID: call.id)
        guard message.attachment == nil, message.body.readableBytes <= FrameEncoder.copyLimit else {
            write(frame, promise: nil)
            write(statusFrame, promise: nil)
            if flushing { flush() }
            return
        }
        var both = allocator.buffer(capacity: 2 * Frame.headerLength + frame.payloadLength + statusFrame.payloadLength)
        FrameEncoder.encode(frame, into: &both)
        FrameEncoder.encode(statusFrame, into: &both)
        if flushing {
            unflushed = false
            context?.writeAndFlush(wrapOutboundOut(both), promise: nil)
        } else {
            unflushed = true
            context?.write(wrapOutboundOut(both), promise: nil)
        }
    }

    private func writeStatus(_ id: UInt32, _ status: RPCStatus, trailers: Metadata) {
        guard !closed else { return }
        write(statusFrame(id, status, trailers: trailers), promise: nil)
    }

    private func statusFrame(_ id: UInt32, _ status: RPCStatus, trailers: Metadata) -> Frame {
        if status.code == .ok && status.message.isEmpty && trailers.isEmpty {
            // An empty CallStatus is OK: the common case needs no encoding.
            return Frame(.status, callID: id)
        }
        var s = CallStatus()
        s.code = status.code.rawValue
        s.message = RPCStatus.capped(status.message).replacingOccurrences(of: "\u{0}", with: " ")
        s.details = ByteBuffer(bytes: status.details)
        s.trailers = trailers.entries.map { e in var m = MetadataEntry(); m.key = e.key; m.value = e.value; return m }
        var b = allocator.buffer(capacity: 32 + s.message.utf8.count)
        try? s.serialize(into: &b)
        return Frame(.status, callID: id, payload: b)
    }

    private func writeGoAway(code: RPCStatus.Code, _ message: String) {
        var g = GoAway()
        g.lastCallId = lastCallID
        g.code = code.rawValue
        g.message = RPCStatus.capped(message)
        var b = allocator.buffer(capacity: 64)
        try? g.serialize(into: &b)
        write(Frame(.goAway, callID: 0, payload: b), promise: nil)
        flush()
    }

    // MARK: connection lifecycle

    private func connectionError(_ error: FrameError) {
        guard !closed else { return }
        logger.info("closing connection: \(error)")
        writeGoAway(code: .invalidArgument, "protocol error: \(error)")
        shutdown(RPCStatus(.unavailable, "connection closed after a protocol error: \(error)"))
        context?.close(promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        logger.debug("connection error: \(error)")
        shutdown(RPCStatus(.unavailable, "connection error: \(error)"))
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !calls.isEmpty { logger.debug("the client went away; cancelling \(calls.count) call(s) in flight") }
        shutdown(RPCStatus(.cancelled, "the client went away"))
        context.fireChannelInactive()
    }

    private func shutdown(_ status: RPCStatus) {
        closed = true
        graceTimer?.cancel()
        let all = calls.values
        calls.removeAll()
        for call in all { teardown(call, status) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard event is ChannelShouldQuiesceEvent else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        guard !draining else { return }
        draining = true
        writeGoAway(code: .ok, "server is shutting down")
        graceTimer = eventLoop.assumeIsolated().scheduleTask(in: limits.gracePeriod) { [self] in
            for id in Array(calls.keys) {
                abort(id, RPCStatus(.unavailable, "server shut down before the call finished"))
            }
            self.context?.close(promise: nil)
        }
        closeIfDrained()
    }

    private func closeIfDrained() {
        if calls.isEmpty { armIdleTimer() }
        if draining && calls.isEmpty && !closed {
            closed = true
            graceTimer?.cancel()
            context?.close(promise: nil)
        }
    }
}
