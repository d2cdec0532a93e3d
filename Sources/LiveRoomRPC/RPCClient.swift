import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// Client settings.
public struct ClientConfiguration: Sendable {
    public var maxFrameSize = Frame.defaultMaxFrameSize
    public var connectTimeout: TimeAmount = .seconds(5)
    /// Sent with every call (for example `authorization: Bearer TOKEN`).
    public var defaultMetadata = Metadata()
    public init() {}
}

/// A connection to an RPC server on which many calls run at once.
public final class RPCClient: Sendable {
    let channel: Channel
    let connection: NIOLoopBound<ClientConnectionHandler>
    let defaultMetadata: Metadata
    public let endpoint: Endpoint
    /// The event loop the connection runs on. Code that makes many calls in a row can run on an
    /// actor whose executor is this loop's (`eventLoop.executor`): each call is then written and
    /// its answer taken without a hop between executors.
    public var eventLoop: EventLoop { channel.eventLoop }

    private init(channel: Channel, connection: NIOLoopBound<ClientConnectionHandler>, endpoint: Endpoint, defaultMetadata: Metadata) {
        self.channel = channel
        self.connection = connection
        self.endpoint = endpoint
        self.defaultMetadata = defaultMetadata
    }

    /// Connects; a server that is not there gives UNAVAILABLE with a message saying where we looked.
    public static func connect(
        to endpoint: Endpoint, configuration: ClientConfiguration = ClientConfiguration(),
        group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> RPCClient {
        let maxFrameSize = configuration.maxFrameSize
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(configuration.connectTimeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let handler = ClientConnectionHandler(maxFrameSize: maxFrameSize)
                    try channel.pipeline.syncOperations.addHandlers([PrefaceWriter(), handler])
                }
            }
        let channel: Channel
        do {
            switch endpoint {
            case .unix(let path):
                channel = try await bootstrap.connect(unixDomainSocketPath: path).get()
            case .tcp(let host, let port):
                channel = try await bootstrap.channelOption(.socketOption(.tcp_nodelay), value: 1)
                    .connect(host: host, port: port).get()
            }
        } catch {
            throw RPCStatus(.unavailable, "cannot connect to \(endpoint): \(Self.explain(error))")
        }
        let connection = try await channel.eventLoop.submit {
            NIOLoopBound(try channel.pipeline.syncOperations.handler(type: ClientConnectionHandler.self), eventLoop: channel.eventLoop)
        }.get()
        return RPCClient(channel: channel, connection: connection,
                         endpoint: endpoint, defaultMetadata: configuration.defaultMetadata)
    }

    private static func explain(_ error: Error) -> String {
        let text = "\(error)"
        if text.contains("ENOENT") || text.contains("No such file") { return "no such socket file (is liveroomd running?)" }
        if text.contains("ECONNREFUSED") || text.contains("Connection refused") { return "connection refused (is liveroomd running?)" }
        if text.contains("EACCES") || text.contains("Permission denied") { return "permission denied on the socket file" }
        return text
    }

    private func merged(_ metadata: Metadata) -> Metadata {
        guard !defaultMetadata.isEmpty else { return metadata }
        var all = defaultMetadata
        for e in metadata { all.add(e.key, e.value) }
        return all
    }

    /// One request, one response. Runs in the caller's isolation (`isolation`, as
    /// `withCheckedContinuation` does): a call costs no hop to the generic executor and back.
    public func unary(path: String, request: RPCPayload, metadata: Metadata = Metadata(), timeout: Duration? = nil,
                      isolation: isolated (any Actor)? = #isolation) async throws -> (RPCPayload, CallOutcome) {
        let connection = self.connection
        let all = merged(metadata)
        let amount = timeout.map(Self.timeAmount)
        let result = await withUnsafeContinuation(isolation: isolation) { (continuation: UnsafeContinuation<CallOutcome, Never>) in
            if connection.eventLoop.inEventLoop {
                // The task already runs on this connection's loop (NIO as the executor): no hop.
                connection.value.openUnary(path: path, metadata: all, timeout: amount, request: request, continuation: continuation)
            } else {
                connection.eventLoop.execute {
                    connection.value.openUnary(path: path, metadata: all, timeout: amount, request: request, continuation: continuation)
                }
            }
        }
        guard result.status.code == .ok else { throw result.status }
        guard let response = result.unaryResponse else {
            throw RPCStatus(.internal, "server ended a unary call with OK but sent no response message")
        }
        return (response, result)
    }

    /// A call with streams in either direction. `request`, if given, is sent and the call half-closed.
    public func makeCall(path: String, metadata: Metadata = Metadata(), timeout: Duration? = nil, request: RPCPayload? = nil) async throws -> ClientCall {
        let opened = try await open(path: path, metadata: metadata, timeout: timeout, request: request, streaming: true)
        return ClientCall(id: opened.id, connection: connection, responses: opened.stream!, outcome: opened.outcome)
    }

    private func open(path: String, metadata: Metadata, timeout: Duration?, request: RPCPayload?, streaming: Bool) async throws
        -> (id: UInt32, stream: AsyncThrowingStream<RPCPayload, Error>?, outcome: EventLoopFuture<CallOutcome>)
    {
        let connection = self.connection
        let all = merged(metadata)
        let amount = timeout.map(Self.timeAmount)
        return try await connection.eventLoop.flatSubmit {
            let promise = connection.eventLoop.makePromise(of: CallOutcome.self)
            switch connection.value.open(path: path, metadata: all, timeout: amount, request: request, streaming: streaming, outcome: promise) {
            case .success(let (id, stream)):
                return connection.eventLoop.makeSucceededFuture((id, stream, promise.futureResult))
            case .failure(let status):
                promise.fail(status)
                return connection.eventLoop.makeFailedFuture(status)
            }
        }.get()
    }

    static func timeAmount(_ d: Duration) -> TimeAmount {
        .nanoseconds(Int64(d.components.seconds) * 1_000_000_000 + d.components.attoseconds / 1_000_000_000)
    }

    /// Round trip of a PING frame.
    public func ping() async throws -> Duration {
        let start = ContinuousClock.now
        let connection = self.connection
        try await connection.eventLoop.flatSubmit {
            let p = connection.eventLoop.makePromise(of: Void.self)
            connection.value.ping(p)
            return p.futureResult
        }.get()
        return ContinuousClock.now - start
    }

    public func close() async {
        try? await channel.close()
    }
}

/// A call in progress, seen from the client.
public final class ClientCall: Sendable {
    public let id: UInt32
    let connection: NIOLoopBound<ClientConnectionHandler>
    /// Response messages; the sequence throws the call's status if it did not end OK.
    public let responses: MessageStream
    private let outcomeFuture: EventLoopFuture<CallOutcome>

    init(id: UInt32, connection: NIOLoopBound<ClientConnectionHandler>, responses: AsyncThrowingStream<RPCPayload, Error>,
         outcome: EventLoopFuture<CallOutcome>) {
        self.id = id
        self.connection = connection
        self.responses = MessageStream(source: .stream(responses, { n in
            connection.eventLoop.execute { connection.value.returnCredit(n, on: id) }
        }))
        self.outcomeFuture = outcome
    }

    /// Sends a message; suspends while the server has not granted credit.
    public func send(_ payload: RPCPayload, end: Bool = false) async throws {
        let connection = self.connection
        let id = self.id
        do {
            try await connection.eventLoop.flatSubmit { connection.value.send(payload, on: id, end: end) }.get()
        } catch let failure as RPCStatus where failure.code == .cancelled {
            // The server ended the call under this send (a wrong key, say): its status says why,
            // and it has arrived by now, since the call is gone.
            if let outcome = try? await outcomeFuture.get(), outcome.status.code != .ok { throw outcome.status }
            throw failure
        }
    }

    /// No more messages from this side.
    public func halfClose() {
        let connection = self.connection
        let id = self.id
        connection.eventLoop.execute { connection.value.halfClose(id) }
    }

    /// Cancels the call: the server's handler is cancelled and the call ends with CANCELLED.
    public func cancel() {
        let connection = self.connection
        let id = self.id
        connection.eventLoop.execute { connection.value.cancel(id, RPCStatus(.cancelled, "cancelled by the client")) }
    }

    /// The final status, trailers and initial metadata, once the call has ended.
    public var outcome: CallOutcome {
        get async throws { try await outcomeFuture.get() }
    }
}
