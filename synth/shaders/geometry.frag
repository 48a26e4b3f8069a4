#version 330 core
// Writes float camera-space normals (OpenCV axes) and metric camera-z into a float32 target.
in vec3 view_position;
in vec3 view_normal;
in float part_label;

layout(location = 0) out vec4 normal_depth;  // (nx, ny, nz, z) OpenCV axes, z in scene units (metres); 0 = none
layout(location = 1) out float part;         // part label / 255 into an 8-bit target: exact for ids 0..255

void main() {
    vec3 n = normalize(view_normal);
    // Open scans show their inside through holes: a back face's normal must still face the camera.
    if (!gl_FrontFacing) n = -n;
    // GL view space is (x right, y up, z backward); OpenCV is (x right, y down, z forward).
    // view_position is interpolated perspective-correctly, so -z is the exact depth of the surface hit
    // by the ray through this pixel's centre (no depth-buffer nonlinearity, no MSAA sub-sample offset).
    normal_depth = vec4(n.x, -n.y, -n.z, -view_position.z);
    part = part_label / 255.0;
}
