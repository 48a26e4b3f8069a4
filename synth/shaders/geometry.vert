#version 330 core
// Geometry pass: positions and normals in GL view space, one float part label per vertex.
layout(location = 0) in vec3 position;
layout(location = 1) in vec3 normal;
layout(location = 2) in float label;

uniform mat4 model_view;     // object -> GL camera (x right, y up, looking down -z)
uniform mat3 normal_matrix;  // inverse-transpose of model_view's 3x3
uniform mat4 projection;

out vec3 view_position;
out vec3 view_normal;
out float part_label;

void main() {
    vec4 p = model_view * vec4(position, 1.0);
    view_position = p.xyz;
    view_normal = normal_matrix * normal;
    part_label = label;
    gl_Position = projection * p;
}
