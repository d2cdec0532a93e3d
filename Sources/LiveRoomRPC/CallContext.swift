import Logging
import NIOConcurrencyHelpers
import NIOCore
import Synchronization

/// How a connection reached the server; access rules depend on it.
public enum Transport: String, Sendable, Hashable {
    case unix, tcp
}

/// What a handler knows about its call. A class: it is handed to every layer a call passes
/// through, and one reference count is cheaper than one per field.
public final class CallContext: Sendable {
    public let callID: UInt32
    /// `/package.Service/Method`
    public let path: String
    public let metadata: Metadata
    public let deadline: NIODeadline?
    /// What every call on the connection shares, held by reference: made once per connection.
    let shared: ConnectionShared
    /// Metadata the handler sets for the response. A `Mutex` needs no lock object of its own.
    private let response = Mutex(ResponseMetadata())

    public var transport: Transport { shared.transport }
    /// The largest frame either side may send on this connection: answers must fit in it.
    public var maxFrameSize: Int { shared.maxFrameSize }
    public var peer: String { shared.peer }
    var connectionLogger: Logger { shared.logger }
    var connection: NIOLoopBound<ServerConnectionHandler> { shared.connection }

    init(callID: UInt32, path: String, metadata: Metadata, deadline: NIODeadline?, shared: ConnectionShared) {
        self.callID = callID
        self.path = path
        self.metadata = metadata
        self.deadline = deadline
        self.shared = shared
    }

    func withResponseMetadata<T: Sendable>(_ body: (inout ResponseMetadata) -> T) -> T {
        response.withLock { body(&$0) }
    }

    /// Ends this call now with `status`, from any task: the peer gets the status, and the
    /// handler's task is cancelled (a pending read of requests ends, a pending send throws).
    public func abort(_ status: RPCStatus) {
        let id = callID
        let connection = self.connection
        connection.eventLoop.execute { connection.value.abortCall(id, status) }
    }

    /// A logger whose lines carry the call id and method. Built on use: setting logger metadata
    /// is costly, and most calls log nothing.
    public var logger: Logger {
        var l = connectionLogger
        l[metadataKey: "call"] = "\(callID)"
        l[metadataKey: "method"] = "\(path)"
        for (k, v) in withResponseMetadata({ $0.log }) { l[metadataKey: k] = v }
        return l
    }

    /// Adds metadata to every later log line about this call, the server's own included
    /// (e.g. the room a call is about).
    public func addLogMetadata(_ key: String, _ value: String) {
        withResponseMetadata { $0.log[key] = .string(value) }
    }

    /// Metadata sent before the first response message (or with the status if there is none).
    public func setInitialMetadata(_ metadata: Metadata) {
        withResponseMetadata { $0.initial = metadata }
    }

    /// Metadata sent with the final status.
    public func setTrailers(_ metadata: Metadata) {
        withResponseMetadata { $0.trailers = metadata }
    }
}

/// The deadline of the call a task serves, for work done on the caller's behalf (such as calls
/// to other servers), which should not outlive it. Set by the server around each handler of
/// a call that has a deadline.
public enum CallDeadline {
    @TaskLocal public static var current: NIODeadline?
}

/// The part of a call's context that is the same for every call on one connection.
final class ConnectionShared: Sendable {
    let transport: Transport
    let peer: String
    let logger: Logger
    let maxFrameSize: Int
    let connection: NIOLoopBound<ServerConnectionHandler>

    init(transport: Transport, peer: String, logger: Logger, maxFrameSize: Int, connection: NIOLoopBound<ServerConnectionHandler>) {
        self.transport = transport
        self.maxFrameSize = maxFrameSize
        self.peer = peer
        self.logger = logger
        self.connection = connection
    }
}

struct ResponseMetadata: Sendable {
    var initial = Metadata()
    var trailers = Metadata()
    var log: Logger.Metadata = [:]
}

/// Messages arriving on a call. Consuming them returns flow-control credit to the peer.
public struct MessageStream: AsyncSequence, Sendable {
    public typealias Element = RPCPayload

    enum Source: Sendable {
        case single(RPCPayload)
        case stream(AsyncThrowingStream<RPCPayload, Error>, @Sendable (Int) -> Void)
    }

    let source: Source

    /// The request of a unary or server-streaming call, which arrives whole before the handler
    /// starts: read without an async iterator.
    var single: RPCPayload? {
        if case .single(let p) = source { return p }
        return nil
    }

    public func makeAsyncIterator() -> Iterator {
        switch source {
        case .single(let p): return Iterator(single: p, stream: nil, returnCredit: nil)
        case .stream(let s, let r): return Iterator(single: nil, stream: s.makeAsyncIterator(), returnCredit: r)
        }
    }

    public struct Iterator: AsyncIteratorProtocol {
        var single: RPCPayload?
        var stream: AsyncThrowingStream<RPCPayload, Error>.AsyncIterator?
        let returnCredit: (@Sendable (Int) -> Void)?
        var unreturned = 0

        public mutating func next() async throws -> RPCPayload? {
            if let s = single {
                single = nil
                return s
            }
            guard stream != nil, let p = try await stream!.next() else { return nil }
            unreturned += p.wireLength
            // Batch credit so that a stream of small messages costs few WINDOW_UPDATE frames.
            if unreturned >= Frame.initialWindow / 4, let returnCredit {
                returnCredit(unreturned)
                unreturned = 0
            }
            return p
        }
    }
}
