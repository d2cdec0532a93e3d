/// A domain failure, with the gRPC status it maps to and a message a person can act on.
public struct RoomError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Code: String, Sendable, Hashable {
        case invalidArgument, notFound, alreadyExists, permissionDenied, failedPrecondition
        case unavailable, deadlineExceeded, aborted, resourceExhausted, `internal`
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code): \(message)" }
}
