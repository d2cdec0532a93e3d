import Foundation
import LiveRoomMessages
import LiveRoomRPC
import NIOCore

/// Calls any method by name with JSON in and JSON out, using only the descriptors
/// (the engine behind `liveroomctl call`, like grpcurl).
public struct DynamicCall: Sendable {
    public let method: MethodInfo
    public let input: MessageDescriptor
    public let output: MessageDescriptor

    /// Accepts `pkg.Service/Method`, `/pkg.Service/Method` or `pkg.Service.Method`.
    public init(methodName: String) throws {
        var name = methodName.hasPrefix("/") ? String(methodName.dropFirst()) : methodName
        if !name.contains("/"), let dot = name.lastIndex(of: ".") {
            name.replaceSubrange(dot...dot, with: "/")
        }
        guard let m = AllServices.methods.first(where: { $0.path == "/" + name }) else {
            throw RPCStatus(.unimplemented, "no method \(methodName) in the protos; `liveroomctl methods` lists them")
        }
        guard let i = LiveRoomDescriptors.pool.message(named: m.inputType),
            let o = LiveRoomDescriptors.pool.message(named: m.outputType)
        else { throw RPCStatus(.internal, "descriptors missing for \(m.path)") }
        method = m
        input = i
        output = o
    }

    /// Runs the call. `requests` are JSON texts (one for unary and server streaming);
    /// `onResponse` gets each response as JSON text.
    public func run(
        on client: RPCClient, requests: [String], metadata: Metadata = Metadata(), timeout: Duration? = nil,
        pretty: Bool = false, onResponse: @Sendable (String) throws -> Void
    ) async throws -> CallOutcome {
        let payloads = try requests.map { RPCPayload(body: try ProtoJSON.encode(text: $0, as: input)) }
        switch method.kind {
        case .unary:
            guard payloads.count == 1 else {
                throw RPCStatus(.invalidArgument, "\(method.path) is unary: give exactly one JSON request, got \(payloads.count)")
            }
            let (response, outcome) = try await client.unary(path: method.path, request: payloads[0], metadata: metadata, timeout: timeout)
            try onResponse(try text(response, pretty))
            return outcome
        case .serverStreaming:
            guard payloads.count == 1 else {
                throw RPCStatus(.invalidArgument, "\(method.path) takes one JSON request, got \(payloads.count)")
            }
            let call = try await client.makeCall(path: method.path, metadata: metadata, timeout: timeout, request: payloads[0])
            return try await drain(call, pretty, onResponse)
        case .clientStreaming, .bidirectional:
            let call = try await client.makeCall(path: method.path, metadata: metadata, timeout: timeout)
            async let outcome = drain(call, pretty, onResponse)
            for p in payloads { try await call.send(p) }
            call.halfClose()
            return try await outcome
        }
    }

    private func drain(_ call: ClientCall, _ pretty: Bool, _ onResponse: @Sendable (String) throws -> Void) async throws -> CallOutcome {
        do {
            for try await p in call.responses { try onResponse(try text(p, pretty)) }
        } catch let status as RPCStatus {
            throw status
        }
        let outcome = try await call.outcome
        guard outcome.status.code == .ok else { throw outcome.status }
        return outcome
    }

    private func text(_ payload: RPCPayload, _ pretty: Bool) throws -> String {
        var body = payload.body
        if payload.attachment != nil, output.fullName == WatchResponse.protoDescriptor.fullName {
            // Decoding puts the media back into the message, so the JSON shows it.
            let m = try MessageCoding.decode(payload, as: WatchResponse.self, code: .internal)
            body = ByteBuffer()
            try m.serialize(into: &body)
        }
        return try ProtoJSON.text(from: body, as: output, pretty: pretty)
    }
}

/// Splits input into JSON requests: one object, or several as JSON lines.
public func splitJSONRequests(_ text: String) -> [String] {
    let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
    if trimmed.isEmpty { return ["{}"] }
    if (try? JSONSerialization.jsonObject(with: Data(trimmed.utf8))) != nil { return [trimmed] }
    return trimmed.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
}

/// A message's fields, in .proto syntax, for `liveroomctl describe`.
public func describeMessage(_ d: MessageDescriptor) -> String {
    var out = "message \(d.fullName) {\n"
    for f in d.fields {
        let type: String
        switch f.type {
        case .message: type = f.messageType!.fullName
        case .enumeration: type = f.enumType!.fullName
        default: type = f.type.protoName
        }
        out += "  \(f.isRepeated ? "repeated " : "")\(type) \(f.name) = \(f.number);\(f.isOneofMember ? "  // oneof member" : "")\n"
    }
    return out + "}"
}

public func describeEnum(_ e: EnumDescriptor) -> String {
    "enum \(e.fullName) {\n" + e.values.map { "  \($0.name) = \($0.number);\n" }.joined() + "}"
}
