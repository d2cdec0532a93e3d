import LiveRoomCodec
import NIOCore

/// Typed messages to and from wire payloads, moving media into attachments.
public enum MessageCoding {
    public static func encode<M: ProtoMessage>(_ message: M) throws -> RPCPayload {
        var m = message
        var attachment: ByteBuffer?
        if M.carriesAttachment, var carrier = m as? any AttachmentCarrying {
            attachment = carrier.takeAttachment()
            if attachment != nil { m = carrier as! M }
        }
        var body = ByteBuffer()
        do {
            try m.serialize(into: &body)
        } catch {
            throw RPCStatus(.invalidArgument, "cannot encode \(M.protoDescriptor.fullName): \(error)")
        }
        return RPCPayload(body: body, attachment: attachment)
    }

    /// - Parameter code: the status for bytes that do not decode (INVALID_ARGUMENT for requests).
    public static func decode<M: ProtoMessage>(_ payload: RPCPayload, as: M.Type = M.self, code: RPCStatus.Code = .invalidArgument) throws -> M {
        var m: M
        do {
            m = try M(buffer: payload.body)
        } catch {
            throw RPCStatus(code, "message is not a valid \(M.protoDescriptor.fullName): \(error)")
        }
        if let a = payload.attachment {
            guard M.carriesAttachment, var carrier = m as? any AttachmentCarrying else {
                throw RPCStatus(code, "\(M.protoDescriptor.fullName) takes no attachment: send it without the ATTACHMENT flag")
            }
            if let problem = carrier.putAttachment(a) {
                throw RPCStatus(code, "\(M.protoDescriptor.fullName): \(problem)")
            }
            m = carrier as! M
        }
        return m
    }
}

/// Typed request messages of a call, as the handler reads them.
public struct RequestSequence<Element: ProtoMessage>: AsyncSequence, Sendable {
    let raw: MessageStream
    let code: RPCStatus.Code

    public func makeAsyncIterator() -> Iterator { Iterator(raw: raw.makeAsyncIterator(), code: code) }

    public struct Iterator: AsyncIteratorProtocol {
        var raw: MessageStream.Iterator
        let code: RPCStatus.Code
        public mutating func next() async throws -> Element? {
            guard let p = try await raw.next() else { return nil }
            return try MessageCoding.decode(p, as: Element.self, code: code)
        }
    }
}

/// Typed response messages sent by a handler.
public struct ResponseSender<Element: ProtoMessage>: Sendable {
    let writer: ResponseWriter

    @usableFromInline
    init(writer: ResponseWriter) { self.writer = writer }

    /// Untyped, event-loop-side writing for callback-driven streams (see `PushWriter`).
    public var push: PushWriter { writer.push }
    public func send(_ message: Element) async throws {
        try await writer.send(try MessageCoding.encode(message))
    }

    /// Sends several messages with one trip to the event loop.
    public func send(contentsOf messages: [Element]) async throws {
        try await writer.send(contentsOf: try messages.map { try MessageCoding.encode($0) })
    }
}

extension ServerCall {
    /// The one request of a unary or server-streaming call. The server collects it before the
    /// handler starts (exactly one MESSAGE, then END), so it is decoded here without an async
    /// frame (for a generic caller, an async frame meant type-metadata lookups on every call).
    @usableFromInline
    func request<I: ProtoMessage>(as: I.Type) throws -> I {
        guard let p = requests.single else {
            throw RPCStatus(.internal, "\(context.path) is registered as unary or server streaming, but its method streams requests")
        }
        return try MessageCoding.decode(p, as: I.self)
    }
}

extension ServiceRegistry {
    // Inlinable, so that the closures are specialized for each method's message types where the
    // method is registered: a generic closure looks up type metadata on every call.
    @inlinable
    public mutating func unary<I, O>(_ method: ProtoMethod<I, O>, _ handler: @escaping @Sendable (I, CallContext) async throws -> O) {
        register(method.info) { call in
            try MessageCoding.encode(try await handler(try call.request(as: I.self), call.context))
        }
    }

    @inlinable
    public mutating func serverStreaming<I, O>(
        _ method: ProtoMethod<I, O>, _ handler: @escaping @Sendable (I, ResponseSender<O>, CallContext) async throws -> Void
    ) {
        register(method.info) { call in
            try await handler(try call.request(as: I.self), ResponseSender(writer: call.responses), call.context)
            return nil
        }
    }

    public mutating func clientStreaming<I, O>(
        _ method: ProtoMethod<I, O>, _ handler: @escaping @Sendable (RequestSequence<I>, CallContext) async throws -> O
    ) {
        register(method.info) { call in
            try MessageCoding.encode(try await handler(RequestSequence(raw: call.requests, code: .invalidArgument), call.context))
        }
    }

    public mutating func bidirectional<I, O>(
        _ method: ProtoMethod<I, O>,
        _ handler: @escaping @Sendable (RequestSequence<I>, ResponseSender<O>, CallContext) async throws -> Void
    ) {
        register(method.info) { call in
            try await handler(RequestSequence(raw: call.requests, code: .invalidArgument), ResponseSender(writer: call.responses), call.context)
            return nil
        }
    }
}

/// A typed streaming call from the client side.
public struct StreamingCall<Input: ProtoMessage, Output: ProtoMessage>: Sendable {
    public let raw: ClientCall

    /// Responses; iteration throws the call's status if it did not end OK.
    public var responses: RequestSequence<Output> { RequestSequence(raw: raw.responses, code: .internal) }

    public func send(_ message: Input) async throws { try await raw.send(try MessageCoding.encode(message)) }
    public func halfClose() { raw.halfClose() }
    public func cancel() { raw.cancel() }
    public var outcome: CallOutcome { get async throws { try await raw.outcome } }

    /// Half-closes and returns the single response (client streaming).
    public func finish() async throws -> Output {
        halfClose()
        var result: Output?
        for try await r in responses {
            guard result == nil else { throw RPCStatus(.internal, "server sent more than one response") }
            result = r
        }
        let outcome = try await raw.outcome
        guard outcome.status.code == .ok else { throw outcome.status }
        guard let result else { throw RPCStatus(.internal, "server ended the call with OK but sent no response") }
        return result
    }
}

extension RPCClient {
    public func unary<I, O>(_ method: ProtoMethod<I, O>, _ request: I, metadata: Metadata = Metadata(), timeout: Duration? = nil,
                            isolation: isolated (any Actor)? = #isolation) async throws -> O {
        try await unaryWithOutcome(method, request, metadata: metadata, timeout: timeout, isolation: isolation).0
    }

    public func unaryWithOutcome<I, O>(
        _ method: ProtoMethod<I, O>, _ request: I, metadata: Metadata = Metadata(), timeout: Duration? = nil,
        isolation: isolated (any Actor)? = #isolation
    ) async throws -> (O, CallOutcome) {
        let (payload, outcome) = try await unary(path: method.info.path, request: try MessageCoding.encode(request), metadata: metadata,
                                                 timeout: timeout, isolation: isolation)
        return (try MessageCoding.decode(payload, as: O.self, code: .internal), outcome)
    }

    /// Server streaming: the request is sent at once; read `responses`.
    public func serverStreaming<I, O>(_ method: ProtoMethod<I, O>, _ request: I, metadata: Metadata = Metadata(), timeout: Duration? = nil) async throws -> StreamingCall<I, O> {
        StreamingCall(raw: try await makeCall(path: method.info.path, metadata: metadata, timeout: timeout, request: try MessageCoding.encode(request)))
    }

    /// Client streaming or bidirectional: `send`, then `halfClose` / `finish`.
    public func streaming<I, O>(_ method: ProtoMethod<I, O>, metadata: Metadata = Metadata(), timeout: Duration? = nil) async throws -> StreamingCall<I, O> {
        StreamingCall(raw: try await makeCall(path: method.info.path, metadata: metadata, timeout: timeout))
    }
}
