// Generates Swift value types for every message, enum and service in Protos/.
// Structure (names, oneofs, streaming) comes from the .proto text; field layout
// comes from the protobuf-c descriptors linked in from CLiveRoomProtos, so the
// Swift always matches the committed C. Run through tools/gen-protos.
import CLiveRoomProtos
import Foundation
import LiveRoomCodec

struct ProtoFile {
    var path: String
    var package = ""
    var messages: [(name: String, oneofs: [String: [String]])] = []  // oneof name -> member field names
    var enums: [String] = []
    var services: [(name: String, rpcs: [(name: String, input: String, output: String, clientStream: Bool, serverStream: Bool)])] = []
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("liveroom-protogen: \(message)\n".utf8))
    exit(1)
}

func tokenize(_ text: String) -> [String] {
    var tokens: [String] = []
    var current = ""
    var lines = text.components(separatedBy: "\n").map { line -> String in
        if let r = line.range(of: "//") { return String(line[..<r.lowerBound]) }
        return line
    }
    lines = lines.filter { !$0.isEmpty }
    for ch in lines.joined(separator: "\n") {
        if ch.isLetter || ch.isNumber || ch == "_" || ch == "." || ch == "-" || ch == "\"" {
            current.append(ch)
        } else {
            if !current.isEmpty { tokens.append(current); current = "" }
            if !ch.isWhitespace { tokens.append(String(ch)) }
        }
    }
    if !current.isEmpty { tokens.append(current) }
    return tokens
}

func parse(path: String) -> ProtoFile {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { fail("cannot read \(path)") }
    let t = tokenize(text)
    var file = ProtoFile(path: path)
    var i = 0
    func skipBlock() {  // i at "{"
        var depth = 0
        repeat {
            if t[i] == "{" { depth += 1 } else if t[i] == "}" { depth -= 1 }
            i += 1
        } while depth > 0 && i < t.count
    }
    while i < t.count {
        switch t[i] {
        case "package":
            file.package = t[i + 1]
            i += 2
        case "enum":
            file.enums.append(t[i + 1])
            i += 2
            skipBlock()
        case "message":
            let name = t[i + 1]
            i += 2
            let start = i
            skipBlock()
            var oneofs: [String: [String]] = [:]
            var j = start + 1
            while j < i - 1 {
                if (t[j] == "message" || t[j] == "enum") && t[j + 2] == "{" { fail("\(path): nested types in \(name) are not supported") }
                if t[j] == "oneof" {
                    let oneof = t[j + 1]
                    j += 3
                    var members: [String] = []
                    while t[j] != "}" {
                        // TYPE NAME = N ;
                        members.append(t[j + 1])
                        while t[j] != ";" { j += 1 }
                        j += 1
                    }
                    oneofs[oneof] = members
                }
                j += 1
            }
            file.messages.append((name, oneofs))
        case "service":
            let name = t[i + 1]
            i += 3
            var rpcs: [(String, String, String, Bool, Bool)] = []
            while t[i] != "}" {
                guard t[i] == "rpc" else { i += 1; continue }
                // rpc NAME ( [stream] IN ) returns ( [stream] OUT ) ;
                let rpcName = t[i + 1]
                i += 3
                let cs = t[i] == "stream"
                if cs { i += 1 }
                let input = t[i]
                i += 4
                let ss = t[i] == "stream"
                if ss { i += 1 }
                let output = t[i]
                i += 2
                if t[i] == "{" { skipBlock() } else { i += 1 }
                rpcs.append((rpcName, input, output, cs, ss))
            }
            i += 1
            file.services.append((name, rpcs))
        default:
            i += 1
        }
    }
    return file
}

// MARK: descriptors

let messageDescriptors: [String: MessageDescriptor] = Dictionary(
    uniqueKeysWithValues: (0..<lr_message_descriptor_count()).map {
        let d = MessageDescriptor(lr_message_descriptor_at($0)!)
        return (d.fullName, d)
    })
let enumDescriptors: [String: EnumDescriptor] = Dictionary(
    uniqueKeysWithValues: (0..<lr_enum_descriptor_count()).map {
        let d = EnumDescriptor(lr_enum_descriptor_at($0)!)
        return (d.fullName, d)
    })

let keywords: Set<String> = [
    "default", "protocol", "extension", "class", "struct", "enum", "func", "var", "let", "in", "is", "as",
    "return", "import", "init", "self", "Self", "operator", "repeat", "switch", "case", "where", "while", "for",
    "if", "else", "do", "try", "throw", "throws", "public", "private", "internal", "static", "type", "Type",
]

func swiftIdent(_ s: String) -> String { keywords.contains(s) ? "`\(s)`" : s }
func upperCamel(_ s: String) -> String {
    let l = lowerCamelCase(s)
    return l.prefix(1).uppercased() + l.dropFirst()
}

func swiftName(fullName: String) -> String {
    String(fullName.split(separator: ".").last!)
}

func swiftType(_ f: FieldDescriptor) -> String {
    switch f.type {
    case .int32, .sint32, .sfixed32: return "Int32"
    case .uint32, .fixed32: return "UInt32"
    case .int64, .sint64, .sfixed64: return "Int64"
    case .uint64, .fixed64: return "UInt64"
    case .float: return "Float"
    case .double: return "Double"
    case .bool: return "Bool"
    case .string: return "String"
    case .bytes: return "ByteBuffer"
    case .enumeration: return swiftName(fullName: f.enumType!.fullName)
    case .message: return swiftName(fullName: f.messageType!.fullName)
    }
}

func defaultValue(_ f: FieldDescriptor) -> String {
    switch f.type {
    case .bool: return "false"
    case .string: return "\"\""
    case .bytes: return "ByteBuffer()"
    case .enumeration: return "\(swiftType(f))(rawValue: 0)"
    case .message: return "nil"
    default: return "0"
    }
}

/// Reader expression for field `i`.
func readExpr(_ f: FieldDescriptor, _ i: Int) -> String {
    let t = swiftType(f)
    if f.isRepeated {
        switch f.type {
        case .float: return "r.repeatedFloat(\(i))"
        case .double: return "r.repeatedDouble(\(i))"
        case .bool: return "r.repeatedBool(\(i))"
        case .string: return "try r.repeatedString(\(i))"
        case .bytes: return "r.repeatedBytes(\(i))"
        case .message: return "try r.repeatedMessage(\(i), as: \(t).self)"
        case .enumeration: return "r.repeatedInt32(\(i)).map(\(t).init(rawValue:))"
        default: return "r.repeated\(t)(\(i))"
        }
    }
    switch f.type {
    case .float: return "r.float(\(i))"
    case .double: return "r.double(\(i))"
    case .bool: return "r.bool(\(i))"
    case .string: return "try r.string(\(i))"
    case .bytes: return "r.bytes(\(i))"
    case .message: return "try r.message(\(i), as: \(t).self)"
    case .enumeration: return "\(t)(rawValue: r.int32(\(i)))"
    default: return "r.\(t.lowercased())(\(i))"
    }
}

/// Writer statement for field `i` with value expression `v`.
func writeStmt(_ f: FieldDescriptor, _ i: Int, _ v: String) -> String {
    let t = swiftType(f)
    if f.isRepeated {
        switch f.type {
        case .float: return "w.repeatedFloat(\(i), \(v))"
        case .double: return "w.repeatedDouble(\(i), \(v))"
        case .bool: return "w.repeatedBool(\(i), \(v))"
        case .string: return "try w.repeatedString(\(i), \(v))"
        case .bytes: return "w.repeatedBytes(\(i), \(v))"
        case .message: return "try w.repeatedMessage(\(i), \(v))"
        case .enumeration: return "w.repeatedInt32(\(i), \(v).map(\\.rawValue))"
        default: return "w.repeated\(t)(\(i), \(v))"
        }
    }
    switch f.type {
    case .float: return "w.float(\(i), \(v))"
    case .double: return "w.double(\(i), \(v))"
    case .bool: return "w.bool(\(i), \(v))"
    case .string: return "try w.string(\(i), \(v))"
    case .bytes: return "w.bytes(\(i), \(v))"
    case .message: return "try w.message(\(i), \(v))"
    case .enumeration: return "w.int32(\(i), \(v).rawValue)"
    default: return "w.\(t.lowercased())(\(i), \(v))"
    }
}

func generateMessage(_ fullName: String, oneofs: [String: [String]]) -> String {
    guard let d = messageDescriptors[fullName] else { fail("no protobuf-c descriptor for \(fullName): run protoc-c first") }
    let name = swiftName(fullName: fullName)
    var memberOf: [String: String] = [:]
    for (o, members) in oneofs { for m in members { memberOf[m] = o } }
    var props: [String] = []
    var reads: [String] = []
    var writes: [String] = []
    var nested: [String] = []
    var doneOneofs: Set<String> = []
    for i in 0..<d.fieldCount {
        let f = d.field(i)
        if let o = memberOf[f.name] {
            guard !doneOneofs.contains(o) else { continue }
            doneOneofs.insert(o)
            let members = (0..<d.fieldCount).filter { memberOf[d.field($0).name] == o }
            let enumName = upperCamel(o)
            var cases: [String] = []
            var readCases: [String] = []
            var writeCases: [String] = []
            for m in members {
                let mf = d.field(m)
                let c = swiftIdent(lowerCamelCase(mf.name))
                cases.append("        case \(c)(\(swiftType(mf)))")
                let rd = mf.type == .message ? "(\(readExpr(mf, m)) ?? \(swiftType(mf))())" : readExpr(mf, m)
                readCases.append("        case \(mf.number): self.\(swiftIdent(lowerCamelCase(o))) = .\(c)(\(rd))")
                writeCases.append("        case .\(c)(let v)?: \(writeStmt(mf, m, "v"))")
            }
            nested.append("    public enum \(enumName): Sendable, Hashable {\n\(cases.joined(separator: "\n"))\n    }")
            props.append("    public var \(swiftIdent(lowerCamelCase(o))): \(enumName)? = nil")
            reads.append("        switch r.oneofCase(\(members[0])) {\n\(readCases.joined(separator: "\n"))\n        default: self.\(swiftIdent(lowerCamelCase(o))) = nil\n        }")
            writes.append("        switch \(swiftIdent(lowerCamelCase(o))) {\n\(writeCases.joined(separator: "\n"))\n        case nil: break\n        }")
            continue
        }
        let prop = swiftIdent(lowerCamelCase(f.name))
        let t = swiftType(f)
        if f.isRepeated {
            props.append("    public var \(prop): [\(t)] = []")
        } else if f.type == .message {
            props.append("    public var \(prop): \(t)? = nil")
        } else {
            props.append("    public var \(prop): \(t) = \(defaultValue(f))")
        }
        reads.append("        self.\(prop) = \(readExpr(f, i))")
        let skip: String
        if f.isRepeated || f.type == .message { skip = "" } else {
            switch f.type {
            case .string: skip = "if !\(prop).isEmpty { "
            case .bytes: skip = "if \(prop).readableBytes > 0 { "
            case .bool: skip = "if \(prop) { "
            case .enumeration: skip = "if \(prop).rawValue != 0 { "
            default: skip = "if \(prop) != 0 { "
            }
        }
        writes.append("        \(skip)\(writeStmt(f, i, prop))\(skip.isEmpty ? "" : " }")")
    }
    var out = "/// `\(fullName)`\npublic struct \(name): ProtoMessage {\n"
    out += props.joined(separator: "\n") + (props.isEmpty ? "" : "\n")
    if !nested.isEmpty { out += "\n" + nested.joined(separator: "\n\n") + "\n" }
    out += "\n    public static let protoDescriptor = LiveRoomDescriptors.message(\"\(fullName)\")\n\n"
    out += "    public init() {}\n\n"
    out += "    public init(reader r: ProtoReader) throws {\n" + reads.joined(separator: "\n") + (reads.isEmpty ? "" : "\n") + "    }\n\n"
    out += "    public func write(to w: inout ProtoWriter) throws {\n" + writes.joined(separator: "\n") + (writes.isEmpty ? "" : "\n") + "    }\n"
    out += "}\n"
    return out
}

func generateEnum(_ fullName: String) -> String {
    guard let d = enumDescriptors[fullName] else { fail("no protobuf-c descriptor for enum \(fullName)") }
    let name = swiftName(fullName: fullName)
    // ROOM_KIND_LIVE in RoomKind -> live
    var prefix = ""
    for ch in name { if ch.isUppercase && !prefix.isEmpty { prefix += "_" }; prefix += ch.uppercased() }
    prefix += "_"
    var out = "/// `\(fullName)`: an open enum, so values unknown to this build survive a round trip.\n"
    out += "public struct \(name): ProtoEnum {\n    public var rawValue: Int32\n\n"
    out += "    public init(rawValue: Int32) { self.rawValue = rawValue }\n\n"
    for v in d.values {
        var short = v.name.hasPrefix(prefix) ? String(v.name.dropFirst(prefix.count)) : v.name
        short = lowerCamelCase(short.lowercased())
        out += "    public static let \(swiftIdent(short)) = \(name)(rawValue: \(v.number))\n"
    }
    out += "\n    public static let protoDescriptor = LiveRoomDescriptors.enumeration(\"\(fullName)\")\n}\n"
    return out
}

func qualify(_ type: String, _ package: String) -> String {
    type.contains(".") ? type : "\(package).\(type)"
}

func generateService(_ s: (name: String, rpcs: [(name: String, input: String, output: String, clientStream: Bool, serverStream: Bool)]), package: String) -> String {
    let full = "\(package).\(s.name)"
    var out = "/// Methods of `\(full)`.\npublic enum \(s.name) {\n    public static let name = \"\(full)\"\n\n"
    var names: [String] = []
    for r in s.rpcs {
        let kind: String
        switch (r.clientStream, r.serverStream) {
        case (false, false): kind = ".unary"
        case (true, false): kind = ".clientStreaming"
        case (false, true): kind = ".serverStreaming"
        case (true, true): kind = ".bidirectional"
        }
        let input = qualify(r.input, package)
        let output = qualify(r.output, package)
        guard messageDescriptors[input] != nil, messageDescriptors[output] != nil else {
            fail("\(full)/\(r.name): unknown message types \(input) or \(output)")
        }
        let prop = lowerCamelCase(r.name.prefix(1).lowercased() + r.name.dropFirst())
        names.append(prop)
        out += "    public static let \(prop) = ProtoMethod<\(swiftName(fullName: input)), \(swiftName(fullName: output))>(\n"
        out += "        MethodInfo(service: name, name: \"\(r.name)\", kind: \(kind), inputType: \"\(input)\", outputType: \"\(output)\"))\n"
    }
    out += "\n    public static let methods: [MethodInfo] = [\(names.map { "\($0).info" }.joined(separator: ", "))]\n}\n"
    return out
}

// MARK: main

var args = CommandLine.arguments.dropFirst()
var protosDir = "Protos"
var outDir = "Sources/LiveRoomMessages/Generated"
while let a = args.popFirst() {
    switch a {
    case "--protos":
        guard let v = args.popFirst() else { fail("--protos needs a folder") }
        protosDir = v
    case "--out":
        guard let v = args.popFirst() else { fail("--out needs a folder") }
        outDir = v
    default: fail("usage: liveroom-protogen --protos DIR --out DIR")
    }
}

let enumerator = FileManager.default.enumerator(atPath: protosDir)
var paths: [String] = []
while let p = enumerator?.nextObject() as? String { if p.hasSuffix(".proto") { paths.append(p) } }
paths.sort()

var seenNames: [String: String] = [:]
var allMessages: [String] = []
var allServices: [String] = []
for rel in paths {
    let file = parse(path: "\(protosDir)/\(rel)")
    var out = "// Generated by liveroom-protogen from \(rel). DO NOT EDIT.\n// Regenerate with tools/gen-protos.\n\n"
    out += "import LiveRoomCodec\nimport NIOCore\n"
    for e in file.enums {
        let full = "\(file.package).\(e)"
        if let other = seenNames[e] { fail("Swift name \(e) of \(full) clashes with \(other)") }
        seenNames[e] = full
        out += "\n" + generateEnum(full)
    }
    for m in file.messages {
        let full = "\(file.package).\(m.name)"
        if let other = seenNames[m.name] { fail("Swift name \(m.name) of \(full) clashes with \(other)") }
        seenNames[m.name] = full
        allMessages.append(m.name)
        out += "\n" + generateMessage(full, oneofs: m.oneofs)
    }
    for s in file.services {
        out += "\n" + generateService(s, package: file.package)
        allServices.append(s.name)
    }
    let name = rel.replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: ".proto", with: ".pb.swift")
    try! out.write(toFile: "\(outDir)/\(name)", atomically: true, encoding: .utf8)
}
var index = "// Generated by liveroom-protogen. DO NOT EDIT.\n\nimport LiveRoomCodec\n\n"
index += "/// Every service declared in Protos/.\npublic enum AllServices {\n"
index += "    public static let methods: [MethodInfo] = [\n"
for s in allServices { index += "        \(s).methods,\n" }
index += "    ].flatMap { $0 }\n}\n\n"
index += "/// Every message type declared in Protos/.\npublic enum AllMessages {\n"
index += "    public static let types: [any ProtoMessage.Type] = [\n"
for m in allMessages { index += "        \(m).self,\n" }
index += "    ]\n}\n"
try! index.write(toFile: "\(outDir)/AllServices.pb.swift", atomically: true, encoding: .utf8)
FileHandle.standardError.write(Data("liveroom-protogen: \(paths.count) files, \(seenNames.count) types, \(allServices.count) services\n".utf8))
